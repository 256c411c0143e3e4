"""The command line (the roof of forager/): `forager/cli/app.py` is the Typer root."""
