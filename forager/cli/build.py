"""`forager build` (repository list → validated images in the catalog) and `forager images` (the catalog)."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.table import Table

from forager.cli.ui import console, fail, interruptible, print_json, progress
from forager.config import Settings
from images.build import BuildOptions, build_list
from images.catalog import load_records
from images.sources import parse_list

_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[\d+m")
DEFAULT_LIST = Path(__file__).resolve().parents[2] / "examples" / "repos.txt"

app = typer.Typer()


def _size(n: int | None) -> str:
    return f"{n / 2**20:.0f} MB" if n else "-"


def _table(records, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("repo", "status", "tests", "build s", "size", "tag / reason"):
        table.add_column(col, overflow="fold")
    for r in records:
        counted = r.tests_passed + r.tests_failed
        tests = f"{r.tests_passed}/{counted} ({r.tests_collected})" if r.tests_collected else "-"
        style = "green" if r.status == "ok" else "red"
        table.add_row(r.repo, f"[{style}]{r.status}[/]", tests, f"{r.build_seconds:.0f}", _size(r.size_bytes), r.tag if r.status == "ok" else _ANSI.sub("", r.reason)[:60])
    return table


@app.command("build")
def build_cmd(
    repos: Path = typer.Argument(DEFAULT_LIST, help="repository list (.txt, or .yaml/.toml with per-entry overrides)"),
    jobs: int = typer.Option(1, "-j", "--jobs", min=1, help="concurrent builds"),
    force: bool = typer.Option(False, "--force", help="rebuild even when an ok image exists"),
    min_pass_rate: float = typer.Option(0.9, "--min-pass-rate", min=0.0, max=1.0, help="share of counted tests that must pass"),
    timeout: int = typer.Option(600, "--timeout", min=1, help="seconds per validation run of a test suite"),
    push: str | None = typer.Option(None, "--push", metavar="REGISTRY/PREFIX", help="tag and push ok images"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON summary on stdout"),
) -> None:
    """Build, validate and catalog Docker images for every repository in a list."""
    if not repos.is_file():
        fail(f"no such list file: {repos}", as_json, code=2)
    specs, errors = parse_list(repos)
    for error in errors:
        console.print(f"[yellow]skipped malformed entry: {error}")
    settings = Settings.from_env()
    options = BuildOptions(force=force, min_pass_rate=min_pass_rate, test_timeout=timeout, push=push)
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
