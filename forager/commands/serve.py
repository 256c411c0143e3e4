"""`forager serve`: run the environment server in the foreground until Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from forager.ui import console, print_json, progress


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback needs --token"),
        port: int = typer.Option(8765),
        token: str | None = typer.Option(
            None, help="bearer token clients must send (default: $FORAGER_ENVSERVER_TOKEN)", show_default=False
        ),
        server_id: str | None = typer.Option(None, help="labels our containers; keep it stable across restarts"),
        allow: list[str] = typer.Option([], "--allow", help="allowed image tag or glob (repeatable), e.g. 'forager/*'"),
        catalog: Path | None = typer.Option(None, help="catalog whose 'ok' images are allowed (default: $FORAGER_HOME/catalog.jsonl)"),
        pool_size: int = typer.Option(0, help="warm containers per image, for every image once it is requested"),
        pool: list[str] = typer.Option([], "--pool", help="IMAGE=N warm containers started now (repeatable)"),
        reaper_interval: float = typer.Option(30.0, help="seconds between reaper passes"),
        max_timeout: float = typer.Option(3600.0, help="ceiling on a shell call's timeout, seconds"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout once serving"),
    ) -> None:
        """Serve environments over HTTP: one container per env, shell/edit/create/submit, warm pool, reaper."""
        import uvicorn

        from envserver.__main__ import parse_pool
        from envserver.app import create_app
        from envserver.config import ServerConfig

        def fail(message: str, code: int) -> None:
            if json_out:
                print_json({"ok": False, "error": message})
            console.print(f"[red]serve:[/] {message}")
            raise typer.Exit(code)

        try:
            config = ServerConfig(
                host=host, port=port, token=token or os.environ.get("FORAGER_ENVSERVER_TOKEN") or None,
                server_id=server_id, allow=allow, catalog=catalog, pool_size=pool_size, pool=parse_pool(pool),
                reaper_interval=reaper_interval, max_timeout=max_timeout,
            )
            app_ = create_app(config)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            fail(str(exc), 2)
        try:
            from envserver.docker_backend import Backend

            Backend(pool_size=4).ping()  # say so plainly now, rather than as a failed startup traceback
        except Exception as exc:
            fail(f"Docker is unavailable: {exc}", 3)
        server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port, log_level="warning", access_log=False))
        url = f"http://{host}:{port}"

        async def announce() -> None:
            """Show the warm-up as a progress bar, then say once (or print one JSON line) that we serve."""
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.05)
            manager = app_.state.manager
            total = sum(config.pool.values())
            with progress(disable=total == 0) as bar:
                task = bar.add_task("warming pool", total=total, status="")
                while total:
                    stats = manager.pool.stats()
                    ready = sum(min(s["ready"], s["target"]) for s in stats.values())
                    failures = manager.pool.failures
                    bar.update(task, completed=ready, status="; ".join(failures.values())[:60])
                    if ready >= total or failures or server.should_exit:
                        break
                    await asyncio.sleep(0.2)
            doc = {
                "ok": True, "url": url, "server_id": manager.server_id, "pid": os.getpid(),
                "removed_at_start": manager.startup_removed, "pool": manager.pool.stats(),
                "pool_failures": manager.pool.failures, "allow": config.allow,
            }
            if json_out:
                print_json(doc)
            console.print(f"[green]serving[/] {url} as {manager.server_id} (docs: {url}/docs; Ctrl-C stops and removes all envs)")

        async def main() -> None:
            watcher = asyncio.create_task(announce())
            try:
                await server.serve()
            finally:
                watcher.cancel()

        try:
            import uvloop

            uvloop.run(main())
        except ImportError:
            asyncio.run(main())
        if not server.started:
            raise typer.Exit(1)
