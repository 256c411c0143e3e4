"""`forager serve`: run the environment server in the foreground (it is `python -m envserver`, exec'd: the
server is a standalone service and the CLI imports none of it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from forager.config import ENVSERVER_TOKEN_FILE, Settings, ensure_secret

app = typer.Typer()


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback needs --token"),
    port: int = typer.Option(8765),
    token_file: Path | None = typer.Option(
        None, help="file holding the bearer token clients must send (default: $FORAGER_ENVSERVER_TOKEN, else "
        "$FORAGER_HOME/envserver.token, made if missing)", show_default=False,
    ),
    server_id: str | None = typer.Option(None, help="labels our containers; keep it stable across restarts"),
    allow: list[str] = typer.Option([], "--allow", help="allowed image tag or glob (repeatable), e.g. 'forager/*'"),
    catalog: Path | None = typer.Option(None, help="catalog whose 'ok' images are allowed (default: $FORAGER_HOME/catalog.jsonl)"),
    pool_size: int = typer.Option(0, help="warm containers per image, for every image once it is requested"),
    pool: list[str] = typer.Option([], "--pool", help="IMAGE=N warm containers started now (repeatable)"),
    reaper_interval: float = typer.Option(30.0, help="seconds between reaper passes"),
    max_timeout: float = typer.Option(3600.0, help="ceiling on a shell call's timeout, seconds"),
    fork_mechanism: str = typer.Option("auto", help="forks by 'snapshot' of the env's btrfs layer, 'commit', or 'auto'"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout once serving"),
) -> None:
    """Serve environments over HTTP: one container per env, shell/edit/create/submit, warm pool, reaper."""
    settings = Settings.from_env()
    if token_file is None and not os.environ.get("FORAGER_ENVSERVER_TOKEN"):
        token_file = settings.home / ENVSERVER_TOKEN_FILE
        ensure_secret(token_file)  # the server always requires a token; clients on this host read the same file
    argv = ["--host", host, "--port", str(port), "--reaper-interval", str(reaper_interval),
            "--max-timeout", str(max_timeout), "--pool-size", str(pool_size), "--fork-mechanism", fork_mechanism]
    for flag, value in (("--token-file", token_file), ("--server-id", server_id), ("--catalog", catalog)):
        if value:
            argv += [flag, str(value)]
    for pattern in allow:
        argv += ["--allow", pattern]
    for item in pool:
        argv += ["--pool", item]
    if json_out:
        argv.append("--json")
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "envserver", *argv])
