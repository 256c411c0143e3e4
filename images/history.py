"""Commits of a repository with history: their dates, the date their dependencies resolve at, and the
commits worth building (`forager build --commits N`: the parents of the last N commits that touched tests,
the states issue-fix tasks start from).

A commit Forager made itself (an sdist or a plain directory, committed with a fixed date) has no
meaningful date: its dependencies resolve as of today.
"""

from __future__ import annotations

from datetime import datetime, timezone

import git

from forager.errors import SourceError
from forager.models import RepoSpec

SYNTHETIC_DATE = 946684800  # 2000-01-01T00:00:00Z: images.sources commits sdists and snapshots with it
# What counts as touching the tests (git pathspecs).
TEST_PATHSPECS = [":(glob)**/test_*.py", ":(glob)**/*_test.py", ":(glob)**/tests/**", ":(glob)**/test/**",
                  ":(glob)**/testing/**", ":(glob)**/conftest.py", ":(glob)**/tests.py"]


def commit_date(repo: git.Repo, sha: str) -> float | None:
    """The commit's committer date (unix time), None for a commit Forager synthesised."""
    when = repo.commit(sha).committed_date
    return None if when == SYNTHETIC_DATE else float(when)


def resolution_date(when: float | None) -> str | None:
    """The instant dependencies resolve at: the first day of the month after the commit (RFC 3339).

    Rounding up to a month boundary lets a month's commits with the same requirements share one
    dependency layer, and admits the bug-fix releases of the commit's own month.
    """
    if when is None:
        return None
    day = datetime.fromtimestamp(when, timezone.utc)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return f"{year:04d}-{month:02d}-01T00:00:00Z"


def test_touching_parents(repo: git.Repo, ref: str, count: int) -> list[str]:
    """Parents of the last `count` commits reachable from `ref` that touched test files (newest first)."""
    try:
        out = repo.git.log("--format=%H %P", f"-n{count}", "--first-parent", ref, "--", *TEST_PATHSPECS)
    except git.GitCommandError as exc:
        raise SourceError(f"git log of {ref} failed: {exc.stderr.strip() or exc}") from exc
    parents = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] not in parents:
            parents.append(parts[1])  # a root commit has no parent: nothing to build before it
    return parents


def expand(spec: RepoSpec, repo: git.Repo, head: str, count: int) -> list[RepoSpec]:
    """One spec per parent of the last `count` test-touching commits from `head` (the entry's commit)."""
    base = spec.source[: -len(spec.ref) - 1] if spec.ref and spec.source.endswith("@" + spec.ref) else spec.source
    return [spec.model_copy(update={"ref": sha, "source": f"{base}@{sha}"}) for sha in test_touching_parents(repo, head, count)]


def expand_commits(specs: list[RepoSpec], mirrors, count: int, log=lambda _m: None) -> tuple[list[RepoSpec], list[str]]:
    """`--commits N`: each entry with history becomes the parents of its last N test-touching commits.

    Returns (specs, messages): an entry that cannot be fetched, has no history (an sdist) or no such
    commit is kept as it is, with a message saying why; nothing is dropped.
    """
    from images import sources

    out: list[RepoSpec] = []
    messages: list[str] = []
    for spec in specs:
        if spec.kind == "pypi":
            messages.append(f"{spec.source}: an sdist has no history; built as listed")
            out.append(spec)
            continue
        try:
            repo, head = sources.fetch(spec, mirrors, log)
        except SourceError as exc:
            messages.append(f"{spec.source}: {exc}; built as listed (it will fail as `clone`)")
            out.append(spec)
            continue
        picked = expand(spec, repo, head, count)
        if not picked:
            messages.append(f"{spec.source}: no commit touching tests before {head[:12]}; built as listed")
            out.append(spec)
        else:
            messages.append(f"{spec.source}: {len(picked)} parent(s) of test-touching commits")
            out += picked
    return out, messages
