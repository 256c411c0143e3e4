"""The `forager` command line: one Typer app, verbs registered by area."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Forager: executable repo environments and agent trajectories.")



@app.callback()
def _main() -> None:
    """Forager: executable repo environments and agent trajectories."""


# Each area owns its verbs in forager/commands/<area>.py and registers them here.
for _area in ("setup_cmd", "serve", "build", "tasks", "fleet", "trace"):
    try:
        _mod = importlib.import_module(f"forager.commands.{_area}")
    except ModuleNotFoundError as exc:  # an area not written yet must not break the others
        if exc.name != f"forager.commands.{_area}":
            raise
        continue
    _mod.register(app)
app.add_typer(importlib.import_module("forager.viewer.cli").app)  # `forager view` (moves to forager/cli/view.py)

if __name__ == "__main__":
    app()
