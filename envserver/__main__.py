"""`python -m envserver --port 8765 --allow 'forager/*'`: run the environment server (`forager serve` execs this).

Progress (the warm pool filling) goes to stderr; with --json one JSON line on stdout says it is serving
(url, server id, pool), or why it could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import uvicorn

from envserver.app import create_app
from envserver.config import ServerConfig
from envserver.docker_backend import Backend


def parse_pool(items: list[str]) -> dict[str, int]:
    pool = {}
    for item in items:
        image, sep, n = item.rpartition("=")
        if not sep or not image or not n.isdigit():
            raise ValueError(f"--pool expects IMAGE=N, got {item!r}")
        pool[image] = int(n)
    return pool


KEEP_ALIVE = 75  # s an idle client connection is kept


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m envserver", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default=None, help="bearer token clients must send (prefer --token-file: argv is public)")
    p.add_argument("--token-file", type=Path, default=None, help="a file holding the token")
    p.add_argument("--server-id", default=None)
    p.add_argument("--allow", action="append", default=[], help="image tag or glob; repeatable")
    p.add_argument("--catalog", type=Path, default=None)
    p.add_argument("--pool-size", type=int, default=0)
    p.add_argument("--grading-pool-size", type=int, default=1, help="warm grading containers per graded image")
    p.add_argument("--max-envs", type=int, default=512)
    p.add_argument("--require-disk-quota", action="store_true", help="refuse to start where envs get no disk quota")
    p.add_argument("--pool", action="append", default=[], help="IMAGE=N warm containers; repeatable")
    p.add_argument("--reaper-interval", type=float, default=30.0)
    p.add_argument("--max-timeout", type=float, default=3600.0)
    p.add_argument("--fork-mechanism", choices=["auto", "snapshot", "commit"], default="auto",
                   help="forks by snapshot of the env's btrfs layer, by docker commit, or auto (snapshot where it works)")
    p.add_argument("--fork-ready", type=int, default=32,
                   help="containers created ahead of forks, in all (0: none; forks then create theirs)")
    p.add_argument("--json", action="store_true", help="one JSON line on stdout once serving")
    return p


def _say(doc: dict, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(doc), flush=True)
    print(f"envserver: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        token = args.token or (args.token_file.read_text().strip() if args.token_file else None)
        config = ServerConfig(
            host=args.host, port=args.port, token=token or os.environ.get("FORAGER_ENVSERVER_TOKEN") or None,
            server_id=args.server_id, allow=args.allow, catalog=args.catalog, pool_size=args.pool_size,
            pool=parse_pool(args.pool), reaper_interval=args.reaper_interval, max_timeout=args.max_timeout,
            grading_pool_size=args.grading_pool_size, max_envs=args.max_envs,
            require_disk_quota=args.require_disk_quota, fork_mechanism=args.fork_mechanism,
            fork_ready_total=args.fork_ready,
        )
        app = create_app(config)
    except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError too
        _say({"ok": False, "error": str(exc)}, args.json, str(exc))
        sys.exit(2)
    try:
        Backend(pool_size=4).ping()  # say so plainly now, rather than as a failed startup traceback
    except Exception as exc:
        _say({"ok": False, "error": f"Docker is unavailable: {exc}"}, args.json, f"Docker is unavailable: {exc}")
        sys.exit(3)
    # Keep-alive well past the clients' (httpx: 5 s): with uvicorn's default of 5 s too, a client reusing an
    # idle connection just as the server closes it gets a ReadError (429 of 10,240 steps at 512 envs).
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                                           timeout_keep_alive=KEEP_ALIVE, backlog=4096))
    url = f"http://{args.host}:{args.port}"

    async def announce() -> None:
        """Report the warm-up on stderr, then say once that we serve."""
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        manager = app.state.manager
        total, last = sum(config.pool.values()), None
        while total:
            stats = manager.pool.stats()
            ready = sum(min(s["ready"], s["target"]) for s in stats.values())
            if ready != last:
                print(f"envserver: warming pool {ready}/{total}", file=sys.stderr, flush=True)
                last = ready
            if ready >= total or manager.pool.failures or server.should_exit:
                break
            await asyncio.sleep(0.2)
        doc = {"ok": True, "event": "serving", "url": url, "server_id": manager.server_id, "pid": os.getpid(),
               "removed_at_start": manager.startup_removed, "pool": manager.pool.stats(),
               "pool_failures": manager.pool.failures, "allow": config.allow}
        _say(doc, args.json, f"serving {url} as {manager.server_id} (docs: {url}/docs; Ctrl-C stops and removes all envs)")

    async def serve() -> None:
        watcher = asyncio.create_task(announce())
        try:
            await server.serve()
        finally:
            watcher.cancel()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())
    if not server.started:
        sys.exit(1)


if __name__ == "__main__":
    main()
