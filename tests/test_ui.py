"""Progress stays visible when stderr is a log file, not a terminal (CI, nohup, redirected runs)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from rich.console import Console
from rich.progress import TextColumn

from forager.cli.ui import LineProgress


def test_line_progress_prints_changes_and_completion_without_a_terminal():
    out = io.StringIO()
    bar = LineProgress(TextColumn("{task.description}"), console=Console(file=out, force_terminal=False, width=100))
    with bar:
        task = bar.add_task("build", total=3, status="")
        bar.update(task, advance=1, status="six ok")
        bar.update(task, advance=1, status="idna ok")  # within the interval: folded
        bar.update(task, advance=1, status="toolz ok")  # completion is always shown
    lines = [line for line in out.getvalue().splitlines() if "build  " in line]
    assert any("build  1/3  six ok" in line for line in lines)
    assert any("build  3/3  toolz ok" in line for line in lines)
    assert not any("2/3" in line for line in lines)


def test_json_output_is_a_single_document_on_stdout():
    proc = subprocess.run([sys.executable, "-m", "forager.cli", "setup", "--check", "--json"], capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.strip().splitlines()) == 1
    assert "parts" in json.loads(proc.stdout)
