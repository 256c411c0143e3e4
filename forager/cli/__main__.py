"""`python -m forager.cli VERB ...` (how subprocesses such as `forager run`'s workers are started)."""

from forager.cli.app import main

main()
