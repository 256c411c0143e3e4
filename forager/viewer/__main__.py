"""`python -m forager.viewer [options]`: the same as `forager view`."""

from forager.viewer.cli import app

app(prog_name="forager view")
