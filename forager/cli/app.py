"""The `forager` command line: one Typer app, each area's verbs in forager/cli/<area>.py.

The CLI is the roof: the only part of forager/ that imports the builder (images/) and the fleet (agent/).
Nothing in the library imports the CLI. Errors Forager means to tell the user (ForagerError) and the env
server's typed errors end a verb with their message, never with a traceback.
"""

from __future__ import annotations

import typer

from envserver.errors import EnvServerError
from forager.cli import build, fleet, interfaces, run, serve, setup, tasks, trace, trajectories, view, world
from forager.cli.ui import fail
from forager.errors import ForagerError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Forager: executable repo environments and agent trajectories.")


@app.callback()
def _main() -> None:
    """Forager: executable repo environments and agent trajectories."""


for area in (setup, serve, build, trajectories, fleet, run, trace, view, world, interfaces):
    app.add_typer(area.app)
app.add_typer(tasks.app, name="tasks")


def main() -> None:
    """The console script: ForagerError and the env server's errors become a one-line message and exit 1."""
    try:
        app()
    except (ForagerError, EnvServerError) as exc:
        try:
            fail(str(exc))
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None


if __name__ == "__main__":
    main()
