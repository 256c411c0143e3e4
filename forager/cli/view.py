"""`forager view`: index $FORAGER_HOME, then serve the viewer until Ctrl-C.

Progress and status go to stderr; with --json, stdout gets exactly one line once serving:
{"ok": true, "url": ...} (or {"ok": false, "error": ...} when it cannot start).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import typer
import uvicorn

from forager.cli.ui import fail
from forager.config import Settings
from forager.viewer.app import create_app
from forager.viewer.auth import check_bind
from forager.viewer.index import StoreIndex

app = typer.Typer(add_completion=False)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _IndexProgress:
    """Indexing progress on stderr: a line every few seconds, so a long first index never looks dead."""

    def __init__(self, every: float = 2.0):
        self.every, self.last = every, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= self.every:
            self.last = now
            _say(f"view: indexing trajectories {done:,}/{total:,}")


@app.command("view")
def view(
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback needs --token"),
    port: int = typer.Option(8780, help="port; 0 picks a free one (the URL says which)"),
    token: str | None = typer.Option(None, envvar="FORAGER_VIEW_TOKEN", show_default=False,
                                     help="token clients must send (Bearer header, or ?token= once: a cookie keeps it)"),
    home: Path | None = typer.Option(None, envvar="FORAGER_HOME", show_default=False,
                                     help="the store to show (default: $FORAGER_HOME, else ~/.forager)"),
    index_path: Path | None = typer.Option(None, "--index", show_default=False,
                                           help="index file (default: HOME/viewer/index.sqlite3)"),
    refresh: float = typer.Option(10.0, help="seconds between index refreshes while serving; 0: never"),
    workers: int = typer.Option(0, help="processes parsing files for a large first index (0: one per core)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line on stdout once serving"),
) -> None:
    """Serve a local web viewer of the store: catalog, tasks, collections, trajectories, traces."""
    settings = Settings.from_env()
    if home is not None:
        settings = settings.model_copy(update={"home": home.expanduser()})
    if not settings.home.is_dir():
        fail(f"no store at {settings.home}: the directory does not exist (set --home or FORAGER_HOME)", json_out, 2)
    try:
        check_bind(host, token)
    except ValueError as exc:
        fail(str(exc), json_out, 2)
    try:
        index = StoreIndex(settings, index_path, workers=workers or None)
    except Exception as exc:  # sqlite3.Error, OSError: an unusable index path
        fail(f"cannot open the index: {exc}", json_out, 2)
    _say(f"view: indexing {settings.home} into {index.db_path}")
    report = index.refresh(progress=_IndexProgress())
    _say(f"view: {report.files:,} files, {report.read:,} read, {report.removed:,} gone, "
         f"{report.bad:,} with unreadable records, in {report.seconds:.1f}s")

    server = uvicorn.Server(uvicorn.Config(create_app(index, token=token, refresh_seconds=refresh),
                                           host=host, port=port, log_level="warning", access_log=False))

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        bound = server.servers[0].sockets[0].getsockname()[1] if port == 0 else port
        url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
        if json_out:
            print(json.dumps({"ok": True, "url": url, "home": str(settings.home), "index": str(index.db_path),
                              "pid": os.getpid(), "files": report.files, "skipped": report.bad}), flush=True)
        _say(f"view: serving {url} (Ctrl-C stops)")

    async def main() -> None:
        watcher = asyncio.create_task(announce())
        try:
            await server.serve()
        finally:
            watcher.cancel()

    asyncio.run(main())
    index.close()
    if not server.started:
        raise typer.Exit(1)
