"""`forager build` (repository list → validated images in the catalog) and `forager images` (the catalog)."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.table import Table

from forager.cli import machine
from forager.cli.ui import console, fail, interruptible, print_json, progress
from forager.config import Settings
from images.build import BuildOptions, build_list
from images.catalog import load_records
from images.history import expand_commits
from images.sources import parse_list

_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[\d+m")
DEFAULT_LIST = Path(__file__).resolve().parents[2] / "examples" / "repos.txt"

app = typer.Typer()


def _size(n: int | None) -> str:
    return f"{n / 2**20:.0f} MB" if n else "-"


def _table(records, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("repo", "commit", "py", "status", "tests", "build s", "size", "tag / why (log)"):
        table.add_column(col, overflow="fold")
    for r in records:
        counted = r.tests_passed + r.tests_failed
        tests = f"{r.tests_passed}/{counted} ({r.tests_collected})" if r.tests_collected else "-"
        if r.timed_out_tests:
            tests += f" {len(r.timed_out_tests)} timed out"
        style = "green" if r.status == "ok" else "red"
        why = r.tag if r.status == "ok" else f"{_ANSI.sub('', r.reason)[:160]} ({r.log_path})"
        table.add_row(r.repo, (r.commit or "-")[:10], r.python or "-", f"[{style}]{r.status}[/]", tests,
                      f"{r.build_seconds:.0f}", _size(r.size_bytes), why)
    return table


@app.command("build")
def build_cmd(
    repos: Path = typer.Argument(DEFAULT_LIST, help="repository list (.txt, or .yaml/.toml with per-entry overrides)"),
    jobs: int = typer.Option(1, "-j", "--jobs", min=1, help="concurrent builds"),
    force: bool = typer.Option(False, "--force", help="rebuild even when an ok image exists"),
    min_pass_rate: float = typer.Option(0.9, "--min-pass-rate", min=0.0, max=1.0, help="share of counted tests that must pass"),
    timeout: int = typer.Option(1200, "--timeout", min=1,
                                 help="seconds per validation run of a test suite (the backstop: a hanging test is stopped by --per-test-timeout)"),
    push: str | None = typer.Option(None, "--push", metavar="REGISTRY/PREFIX", help="tag and push ok images"),
    commits: int = typer.Option(0, "--commits", min=0, metavar="N",
                                help="build each entry at the parents of its last N commits that touched tests"),
    per_test_timeout: int = typer.Option(60, "--per-test-timeout", min=0, help="seconds one test may run (0: no limit)"),
    resolve_at: str = typer.Option("commit", "--resolve-at", help="dependencies as of the commit's date ('commit') or 'today'"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON summary on stdout"),
) -> None:
    """Build, validate and catalog Docker images for every repository in a list (entries may be repo@commit)."""
    if not repos.is_file():
        fail(f"no such list file: {repos}", as_json, code=2)
    if resolve_at not in ("commit", "today"):
        fail(f"--resolve-at must be 'commit' or 'today', not {resolve_at!r}", as_json, code=2)
    specs, errors = parse_list(repos)
    for error in errors:
        console.print(f"[yellow]skipped malformed entry: {error}")
    settings = Settings.from_env()
    if commits:
        console.print(f"finding the parents of the last {commits} test-touching commits of {len(specs)} entries")
        specs, notes = expand_commits(specs, settings.mirror_dir, commits)
        for note in notes:
            console.print(f"[cyan]commits[/] {note}")
    options = BuildOptions(force=force, min_pass_rate=min_pass_rate, test_timeout=timeout, push=push,
                           per_test_timeout=per_test_timeout or None, resolve_at=resolve_at,
                           install_host_packages=lambda packages: machine.apt_install(packages, console.print))
    summary: dict = {}
    interruptible()  # SIGTERM unwinds: the sandboxes of builds in flight are removed
    with progress() as bar:
        records = build_list(specs, settings, jobs=jobs, force=force, progress=bar, options=options, summary=summary)
    summary["errors"] = errors
    summary["catalog"] = str(settings.catalog_path)
    for message in summary.get("push_errors", []):
        console.print(f"[red]{message}")
    if as_json:
        print_json({"summary": summary, "records": [_brief(r) for r in records]})
    else:
        console.print(_table(records, f"{summary['ok']}/{summary['total']} ok ({summary['cached']} cached)"))
    if summary.get("push_errors"):
        raise typer.Exit(1)

@app.command("images")
def images_cmd(
    ok_only: bool = typer.Option(False, "--ok", help="only validated images"),
    as_json: bool = typer.Option(False, "--json", help="print the records as one JSON list on stdout"),
) -> None:
    """List the image catalog ($FORAGER_HOME/catalog.jsonl)."""
    settings = Settings.from_env()
    records = [r for r in load_records(settings.catalog_path) if r.status == "ok" or not ok_only]
    if as_json:
        print_json(records)
    else:
        console.print(_table(records, f"{settings.catalog_path}: {sum(r.status == 'ok' for r in records)}/{len(records)} ok"))


def _brief(record) -> dict:
    """A record without the bulky per-test outcomes and pip freeze (they stay in the catalog)."""
    return record.model_dump(mode="json", exclude={"test_outcomes", "pip_freeze"})
