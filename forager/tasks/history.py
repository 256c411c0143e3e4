"""Walking a repository's history and picking the commits that look like one bug fix with its test, without a model.

Pure git and text (a `git` subprocess on the repository or a bare mirror; never the network), so every
rule is unit-testable without Docker. The walk is `git log --topo-order` over a range (default HEAD), newest
first. A commit is a unit; a merged pull request is a unit too (its whole change against the first parent)
when none of its own commits is a candidate; any other merge brings unrelated work and is skipped.

Each unit gets one verdict: `candidate`, or the first rule that rejects it (RULES, in order). A path is
`test` (tests/, test_*.py, *_test.py, conftest.py: the hidden test patch), `docs` (documentation,
changelogs, CI and repository metadata: dropped), `vendored` (third-party code copied in), or `library`
(everything else: the gold patch).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from forager.errors import MiningError
from forager.tasks.candidates import is_test_path
from forager.tasks.codechange import reached, same_code, touched_names

# Why a unit is not a candidate, in the order the rules are applied (the benchmark reports their shares).
RULES = (
    "root",             # no parent: nothing to fix
    "merge_unrelated",  # a merge that is not a pull request (a branch sync): unrelated work
    "pr_commits",       # a merged pull request whose own commits are candidates (mined one by one instead)
    "no_tests",         # no test changed
    "docs_only",        # besides tests, only documentation, changelogs or metadata changed
    "vendored",         # third-party code copied into the repository changed
    "no_library",       # only tests changed
    "no_code",          # the library change holds no Python source
    "too_large",        # more files or lines than one fix
    "no_fix_evidence",  # the message names no bug and references no issue
    "formatting",       # the Python change leaves the code as it was (whitespace, comments, docstrings)
    "tests_unrelated",  # no test gains lines, or the changed tests neither name nor import the changed code
    "duplicate",        # the same change was seen in a newer commit (a backport, a cherry-pick)
)

FIX_WORDS = re.compile(
    r"\b(fix\w*|bug\w*|hotfix|issue|error\w*|crash\w*|regression\w*|wrong\w*|incorrect\w*|broke\w*|breaks?|"
    r"mistake\w*|correct(ly|s|ed|ion)?|fail\w*|exception\w*|handl\w*|prevent\w*|avoid\w*|missing|problem\w*|"
    r"workaround\w*|invalid|unexpected\w*|properly|resolve[sd]?|repair\w*)\b", re.I)
ISSUE_REF = re.compile(r"(?<![\w/&])(?:#|gh-|GH-)(\d{1,6})\b")
PR_SUFFIX = re.compile(r"\s*\((?:#|gh-|GH-)(\d+)\)\s*$")  # a squash merge's "(#123)": the PR's own number
PR_MERGE = re.compile(r"^Merge pull request #(\d+) from \S+")
GITLAB_MERGE = re.compile(r"^See merge request \S*!(\d+)", re.M)
TRAILER = re.compile(r"^(Signed-off-by|Co-authored-by|Co-Authored-By|Reviewed-by|Acked-by|Tested-by|Reported-by|"
                     r"Suggested-by|Change-Id|Cc|Helped-by|Reviewed-on|Approved-by):", re.I)

DOC_DIRS = {"doc", "docs", "documentation", "changelog.d", "changes", "newsfragments", "news", ".github",
            ".circleci", ".gitlab", "examples", "example", "benchmarks", "bench", "asv_bench", "artwork", "scripts"}
DOC_SUFFIXES = {".rst", ".md", ".txt", ".adoc", ".png", ".svg", ".jpg", ".gif", ".ico", ".html", ".css", ".toml.j2",
                ".yml", ".yaml", ".ipynb"}
DOC_NAMES = re.compile(r"^(CHANGE|CHANGES|CHANGELOG|HISTORY|NEWS|AUTHORS|CONTRIBUTORS|CONTRIBUTING|LICEN[CS]E|"
                       r"README|RELEASE|MAINTAINERS|CODE_OF_CONDUCT|SECURITY|MANIFEST|NOTICE|COPYING)", re.I)
META_NAMES = {".gitignore", ".gitattributes", ".mailmap", ".pre-commit-config.yaml", ".readthedocs.yaml",
              ".readthedocs.yml", ".coveragerc", ".git-blame-ignore-revs", ".editorconfig", ".travis.yml",
              "appveyor.yml", "codecov.yml", ".flake8", ".pylintrc", "noxfile.py", "Makefile", "make.bat",
              "requirements-dev.txt", "dev-requirements.txt", ".gitmodules", "CITATION.cff"}
VENDOR_DIRS = {"_vendor", "vendor", "vendored", "third_party", "thirdparty", "extern", "_extern", "externals"}
REQUIREMENTS = re.compile(r"^(requirements|constraints)[\w.-]*\.(txt|in)$")


@dataclass
class Caps:
    """What one fix may be: library files and lines changed, test files and lines changed, and whether its
    message must show it is a fix (fix words or issue references; off only to measure what that rule costs)."""

    max_files: int = 4
    max_lines: int = 150
    max_test_files: int = 5
    max_test_lines: int = 500
    fix_evidence: bool = True


@dataclass
class FileChange:
    path: str
    added: int
    deleted: int
    role: str = ""  # test | docs | vendored | library
    binary: bool = False

    @property
    def lines(self) -> int:
        return self.added + self.deleted


@dataclass
class Commit:
    sha: str
    parents: list[str]
    date: float  # committer date, unix time
    message: str
    files: list[FileChange] = field(default_factory=list)

    @property
    def parent(self) -> str | None:
        return self.parents[0] if self.parents else None

    @property
    def subject(self) -> str:
        return self.message.strip().splitlines()[0] if self.message.strip() else ""

    def of(self, role: str) -> list[FileChange]:
        return [f for f in self.files if f.role == role]


@dataclass
class Verdict:
    commit: Commit
    verdict: str  # "candidate" or one of RULES
    detail: str = ""
    pull_request: int | None = None  # the PR number when the unit is a merged pull request
    evidence: list[str] = field(default_factory=list)

    @property
    def is_candidate(self) -> bool:
        return self.verdict == "candidate"


# ---------------------------------------------------------------- git


def git(repo: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", repo, "-c", "core.quotePath=false", *args], capture_output=True, text=True,
                          errors="replace")
    if check and proc.returncode != 0:
        raise MiningError(f"git {' '.join(args[:3])} failed in {repo}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def ensure_repo(repo: str) -> None:
    """A MiningError unless `repo` is a git repository (the top of a work tree, or a bare mirror) with commits."""
    proc = subprocess.run(["git", "-C", repo, "rev-parse", "--is-bare-repository"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MiningError(f"{repo} is not a git repository: {proc.stderr.strip()[-300:]}")
    top = git(repo, "rev-parse", "--show-toplevel").strip() if proc.stdout.strip() != "true" else repo
    if Path(top).resolve() != Path(repo).resolve():
        # the builder would snapshot this directory, not check out the enclosing repository's commits
        raise MiningError(f"{repo} is inside the git repository {top}, not its top: mine {top} instead")
    if subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode:
        raise MiningError(f"{repo} has no commits (HEAD does not resolve)")


_SEP, _FIELD = "\x1e", "\x1f"


def read_commits(repo: str, revisions: str = "HEAD", *, since: str | None = None, max_commits: int | None = None) -> list[Commit]:
    """Commits of `revisions` (a ref or `A..B`), newest first, each with the files it changes against its first parent."""
    ensure_repo(repo)
    if revisions.startswith("-"):
        raise MiningError(f"{revisions!r} is not a range: a range is a ref or A..B")
    args = ["log", "--topo-order", "--no-renames", "--diff-merges=first-parent", "--numstat",
            f"--format={_SEP}%H{_FIELD}%P{_FIELD}%ct{_FIELD}%B{_FIELD}"]
    if since:
        args.append(f"--since={since}")
    if max_commits:
        args.append(f"--max-count={max_commits}")
    proc = subprocess.run(["git", "-C", repo, "-c", "core.quotePath=false", *args, revisions, "--"],
                          capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise MiningError(f"cannot walk {revisions!r} in {repo}: {proc.stderr.strip()[-400:]}")
    commits = []
    for record in proc.stdout.split(_SEP)[1:]:
        sha, parents, date, message, stats = record.split(_FIELD)
        commit = Commit(sha, parents.split(), float(date), message.strip())
        for line in stats.strip().splitlines():
            added, deleted, path = line.split("\t", 2)
            binary = added == "-"
            commit.files.append(FileChange(path, 0 if binary else int(added), 0 if binary else int(deleted),
                                           role_of(path), binary))
        commits.append(commit)
    return commits


def show(repo: str, sha: str, path: str) -> str | None:
    """A file's text at a commit, None where it does not exist."""
    proc = subprocess.run(["git", "-C", repo, "show", f"{sha}:{path}"], capture_output=True)
    return proc.stdout.decode(errors="replace") if proc.returncode == 0 else None


def diff(repo: str, old: str, new: str, paths: list[str], *, context: int = 3) -> str:
    """`git diff old new -- paths`, binary-safe, in the form `git apply` takes ('' for no paths)."""
    if not paths:
        return ""
    return git(repo, "diff", "--no-renames", "--binary", "--full-index", "--no-color", "--no-ext-diff",
               f"-U{context}", old, new, "--", *paths)


# ---------------------------------------------------------------- paths


def role_of(path: str) -> str:
    parts = PurePosixPath(path).parts
    name = parts[-1]
    if any(p in VENDOR_DIRS for p in parts[:-1]):
        return "vendored"
    if is_test_path(path):
        return "test"
    top = parts[0] if len(parts) > 1 else ""
    suffix = PurePosixPath(name).suffix.lower()
    if top in DOC_DIRS or name in META_NAMES or DOC_NAMES.match(name) or REQUIREMENTS.match(name):
        return "docs"
    # prose anywhere; other non-code files only at the top (inside a package they may be its data)
    if suffix in (".rst", ".md", ".adoc") or (len(parts) == 1 and (suffix in DOC_SUFFIXES or name.startswith("."))):
        return "docs"
    return "library"


def is_test_module(path: str) -> bool:
    """A file pytest collects tests from (not a helper or conftest)."""
    name = PurePosixPath(path).name
    return name.endswith(".py") and (name.startswith("test") or name.endswith("_test.py"))


# ---------------------------------------------------------------- messages


def clean_message(message: str) -> str:
    """The message without trailers (Signed-off-by, Co-authored-by, ...) and merge boilerplate."""
    lines = [ln for ln in message.strip().splitlines() if not TRAILER.match(ln.strip())]
    if lines and PR_MERGE.match(lines[0]):
        lines = lines[1:]
    text = "\n".join(lines).strip()
    return GITLAB_MERGE.sub("", text).strip()


def issue_refs(message: str, pull_request: int | None = None, *, evidence: bool = False) -> list[int]:
    """Issue numbers the message references (`#123`, `gh-123`), a merge's own pull request number excluded.

    With `evidence`, a subject's trailing `(#123)` is left out too: squash merges append their pull
    request's number there, which says nothing about a bug.
    """
    first, _, rest = clean_message(message).partition("\n")
    if evidence:
        first = PR_SUFFIX.sub("", first)
    refs = {int(n) for n in ISSUE_REF.findall(first + "\n" + rest)}
    return sorted(refs - {pull_request})


def fix_words(message: str) -> list[str]:
    return sorted({m.group(0).lower() for m in FIX_WORDS.finditer(clean_message(message))})


def pull_request_number(message: str) -> int | None:
    m = PR_MERGE.match(message.strip()) or GITLAB_MERGE.search(message)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- the rules


def judge(repo: str, commit: Commit, caps: Caps, *, pr_candidates: bool = False) -> Verdict:
    """The first rule that rejects the unit, or `candidate` with the evidence that it is one fix.

    `pr_candidates`: for a merged pull request, whether any of its own commits is a candidate.
    """
    pr = pull_request_number(commit.message) if len(commit.parents) > 1 else None
    v = Verdict(commit, "candidate", pull_request=pr)
    if not commit.parents:
        return _reject(v, "root", "the first commit")
    if len(commit.parents) > 1 and pr is None:
        return _reject(v, "merge_unrelated", commit.subject[:120])
    if pr is not None and pr_candidates:
        return _reject(v, "pr_commits", f"pull request #{pr}: its commits are mined one by one")
    tests, library, docs = commit.of("test"), commit.of("library"), commit.of("docs")
    if not tests:
        return _reject(v, "docs_only" if docs and not library else "no_tests", "no test file changed")
    if commit.of("vendored"):
        return _reject(v, "vendored", ", ".join(f.path for f in commit.of("vendored")[:5]))
    if not library:
        return _reject(v, "docs_only" if docs else "no_library",
                       "besides tests: " + (", ".join(f.path for f in docs[:5]) or "nothing"))
    code = [f.path for f in library if f.path.endswith(".py") and not f.binary]
    if not code:
        return _reject(v, "no_code", ", ".join(f.path for f in library[:5]))
    lines, test_lines = sum(f.lines for f in library), sum(f.lines for f in tests)
    if len(library) > caps.max_files or lines > caps.max_lines:
        return _reject(v, "too_large", f"{len(library)} library files, {lines} lines")
    if len(tests) > caps.max_test_files or test_lines > caps.max_test_lines:
        return _reject(v, "too_large", f"{len(tests)} test files, {test_lines} test lines")
    words, refs = fix_words(commit.message), issue_refs(commit.message, pr, evidence=True)
    if caps.fix_evidence and not words and not refs:  # before the checks that read files: the cheapest one
        return _reject(v, "no_fix_evidence", commit.subject[:120])
    before = {p: show(repo, commit.parent, p) for p in code}
    after = {p: show(repo, commit.sha, p) for p in code}
    if all(same_code(before[p], after[p]) for p in code):
        return _reject(v, "formatting", "the code is the same (whitespace, comments, docstrings)")
    names = set().union(*(touched_names(p, before[p], after[p], diff(repo, commit.parent, commit.sha, [p], context=0))
                          for p in code))
    modules = [f.path for f in tests if is_test_module(f.path) and f.added]
    exercised = modules and reached(names, diff(repo, commit.parent, commit.sha, [f.path for f in tests]), modules,
                                    [show(repo, commit.sha, m) for m in modules], code)
    if not exercised:
        return _reject(v, "tests_unrelated", f"no test module gains lines naming or importing {sorted(names)[:8]}")
    v.evidence = [*(f"word:{w}" for w in words[:5]), *(f"issue:#{n}" for n in refs[:5]),
                  *(f"exercises:{n}" for n in exercised[:5])]
    return v


def _reject(v: Verdict, rule: str, detail: str) -> Verdict:
    v.verdict, v.detail = rule, detail
    return v


def patch_id(repo: str, commit: Commit) -> str:
    """git's stable patch id of the unit's change: equal for the same change committed twice (a backport)."""
    text = git(repo, "diff", "--no-renames", commit.parent, commit.sha)
    proc = subprocess.run(["git", "-C", repo, "patch-id", "--stable"], input=text, capture_output=True, text=True)
    return proc.stdout.split()[0] if proc.stdout.strip() else commit.sha


def scan(repo: str, revisions: str = "HEAD", *, since: str | None = None, max_commits: int | None = None,
         caps: Caps | None = None) -> list[Verdict]:
    """One verdict per commit of the walk, newest first; candidates carry their evidence."""
    caps = caps or Caps()
    commits = read_commits(repo, revisions, since=since, max_commits=max_commits)
    by_sha = {c.sha: c for c in commits}
    verdicts, seen = [], set()
    for commit in commits:
        pr_candidates = False
        if len(commit.parents) > 1 and pull_request_number(commit.message) is not None:
            branch = f"{commit.parents[0]}..{commit.parents[1]}"
            shas = git(repo, "rev-list", branch).split()
            # the PR's own commits; those outside the window are read so we know whether they stand alone
            own = [by_sha[s] for s in shas] if all(s in by_sha for s in shas) else read_commits(repo, branch)
            pr_candidates = any(judge(repo, c, caps).is_candidate for c in own if len(c.parents) == 1)
        v = judge(repo, commit, caps, pr_candidates=pr_candidates)
        if v.is_candidate:
            pid = patch_id(repo, commit)
            if pid in seen:
                v = _reject(v, "duplicate", f"patch id {pid[:12]} (seen in a newer commit)")
            seen.add(pid)
        verdicts.append(v)
    return verdicts


# ---------------------------------------------------------------- a candidate's patches


@dataclass
class FixPatches:
    """A candidate split the way a task needs it."""

    gold_patch: str  # the library change: what the agent must reproduce (never shown)
    test_patch: str  # the test change: hidden, applied at grading
    test_files: list[str]  # every test file the test patch touches (restored before it is applied)
    test_modules: list[str]  # the touched files pytest collects tests from, as they are after the fix
    dropped: list[str]  # docs, changelogs and metadata: in neither patch


def split_patches(repo: str, commit: Commit) -> FixPatches:
    tests = [f.path for f in commit.of("test")]
    deleted = set(git(repo, "diff", "--no-renames", "--name-only", "--diff-filter=D", commit.parent, commit.sha,
                      "--", *tests).split()) if tests else set()
    return FixPatches(
        gold_patch=diff(repo, commit.parent, commit.sha, [f.path for f in commit.of("library")]),
        test_patch=diff(repo, commit.parent, commit.sha, tests),
        test_files=sorted(tests),
        test_modules=sorted(p for p in tests if is_test_module(p) and p not in deleted),
        dropped=sorted(f.path for f in commit.files if f.role in ("docs", "vendored")),
    )
