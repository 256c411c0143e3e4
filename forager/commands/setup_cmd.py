"""`forager setup`: install and start what Forager needs on this machine."""

from __future__ import annotations

import typer

from forager import bootstrap
from forager.config import Settings
from forager.ui import console, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def setup(
        check: bool = typer.Option(False, "--check", help="only report each part's state; change nothing"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
    ) -> None:
        """Install and start the Docker engine and Redis where missing; make the base image available."""
        settings = Settings.from_env()
        try:
            if check:
                states = bootstrap.check(settings)
            else:
                states = bootstrap.setup(settings, log=lambda m: console.print(f"[cyan]setup[/] {m}"))
        except bootstrap.SetupError as exc:
            if json_out:
                print_json({"ok": False, "error": str(exc)})
            console.print(f"[red]setup failed:[/] {exc}")
            raise typer.Exit(1)
        ok = all(s.ok for s in states)
        if json_out:
            print_json({"ok": ok, "parts": states})
        else:
            for s in states:
                mark = "[green]ok[/]" if s.ok else "[red]missing[/]"
                console.print(f"{mark:>20}  {s.name:<17} {s.detail}{'  (changed)' if s.changed else ''}")
        if not ok:
            raise typer.Exit(1)
