"""`forager setup`: install and start what Forager needs on this machine (forager/cli/machine.py)."""

from __future__ import annotations

import typer

from forager.cli import machine
from forager.cli.ui import console, fail, print_json
from forager.config import Settings
from forager.errors import SetupError

app = typer.Typer()


@app.command()
def setup(
    check: bool = typer.Option(False, "--check", help="only report each part's state; change nothing"),
    pythons: str = typer.Option("", "--pythons", metavar="all|X.Y,...",
                                help="also make base images for these Pythons (all: 3.9, 3.11, 3.13); 3.11 is always made"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document on stdout"),
) -> None:
    """Install and start the Docker engine and Redis where missing; make the base image(s) available."""
    settings = Settings.from_env()
    try:
        wanted = machine.parse_pythons(pythons)
        if check:
            states = machine.check(settings, wanted)
        else:
            states = machine.setup(settings, log=lambda m: console.print(f"[cyan]setup[/] {m}"), pythons=wanted)
    except SetupError as exc:
        fail(f"setup failed: {exc}", json_out)
    ok = all(s.ok for s in states)
    if json_out:
        print_json({"ok": ok, "parts": states})
    else:
        for s in states:
            mark = "[green]ok[/]" if s.ok else "[red]missing[/]"
            console.print(f"{mark:>20}  {s.name:<17} {s.detail}{'  (changed)' if s.changed else ''}")
    if not ok:
        raise typer.Exit(1)
