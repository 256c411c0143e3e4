"""`python -m envserver --port 8765 --allow 'forager/*'`: the server without the forager CLI (tests, containers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import uvicorn

from envserver.app import create_app
from envserver.config import ServerConfig


def parse_pool(items: list[str]) -> dict[str, int]:
    pool = {}
    for item in items:
        image, sep, n = item.rpartition("=")
        if not sep or not image or not n.isdigit():
            raise ValueError(f"--pool expects IMAGE=N, got {item!r}")
        pool[image] = int(n)
    return pool


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m envserver", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default=None)
    p.add_argument("--server-id", default=None)
    p.add_argument("--allow", action="append", default=[], help="image tag or glob; repeatable")
    p.add_argument("--catalog", type=Path, default=None)
    p.add_argument("--pool-size", type=int, default=0)
    p.add_argument("--pool", action="append", default=[], help="IMAGE=N warm containers; repeatable")
    p.add_argument("--reaper-interval", type=float, default=30.0)
    p.add_argument("--max-timeout", type=float, default=3600.0)
    args = p.parse_args(argv)
    try:
        config = ServerConfig(
            host=args.host, port=args.port, token=args.token, server_id=args.server_id, allow=args.allow,
            catalog=args.catalog, pool_size=args.pool_size, pool=parse_pool(args.pool),
            reaper_interval=args.reaper_interval, max_timeout=args.max_timeout,
        )
        app = create_app(config)
    except ValueError as exc:
        sys.exit(f"envserver: {exc}")
    print(json.dumps({"event": "starting", "server_id": config.resolved_server_id(), "url": f"http://{args.host}:{args.port}"}), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
