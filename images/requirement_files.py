"""Which requirement files make the test environment, chosen as a person would, and how they are read.

A project keeps requirement files for many purposes: the test environment, docs, linting, typing, a
tox environment that pins the *minimum* supported versions. Merging them all asks the resolver for
conflicting pins (a real 2023 commit of a well-known project failed that way). So:

1. Evidence first: the files the project's own test tooling installs (`-r FILE` in tox's unconditional
   `[testenv] deps`, `session.install("-r", FILE)` in noxfile.py, `pip install -r FILE` in CI workflows).
2. Otherwise names: `requirements.txt` (runtime) plus the test files (`*test*`), else the dev files.
3. Never files for other purposes (docs, lint, typing, style, release, benchmarks) or minimum-version pins
   (`min`, `minimum`, `lowest`, `oldest`), even when evidence names them; a pinned `.txt` wins over its `.in`.

Reading inlines `-r`/`-c` includes; an include (or a symlinked file) that leaves the repository tree is
refused with a DetectError naming the file and the include.
"""

from __future__ import annotations

import re
from pathlib import Path

from forager.errors import DetectError
from images.manifests import Manifests, lines_of

# Words in a file's path that mark it as meant for something other than running the tests.
_OTHER_PURPOSE = re.compile(
    r"(^|[-_./])(min|mins|minimum|minimal|lowest|oldest|mindeps|floor|doc|docs|lint|linting|typ|typing|types|mypy|"
    r"style|format|pre-commit|precommit|release|publish|upload|bench|benchmark|benchmarks|tox|pip|build|wheel|"
    r"coverage|security)([-_./]|$)"
)
_TESTY = re.compile(r"(^|[-_./])(test|tests|testing)([-_./]|$)")
_DEVY = re.compile(r"(^|[-_./])(dev|develop|development)([-_./]|$)")
_BASE = ("requirements.txt", "requirements/base.txt", "requirements/main.txt", "requirements/runtime.txt")
# `-r FILE` as tox, nox and CI scripts write it.
_INCLUDE = re.compile(r"""(?:-r|--requirement)[\s=]*['"]?([\w./{}-]+\.(?:txt|in))""")
_NOX_INCLUDE = re.compile(r"""install\(\s*['"]-r['"]\s*,\s*['"]([\w./-]+)['"]""")


def choose(meta: Manifests, notes: list[str]) -> list[Path]:
    """The requirement files of the test environment (runtime file first), in the order to read them."""
    root = meta.root
    candidates = _candidates(root)
    rel = {p: p.relative_to(root).as_posix().lower() for p in candidates}
    usable = [p for p in candidates if not _OTHER_PURPOSE.search(rel[p]) or rel[p] in _BASE]
    skipped = sorted(rel[p] for p in candidates if p not in usable)
    if skipped:
        notes.append(f"requirement files left out (docs, lint, typing, min-version pins, ...): {skipped}")
    named = _evidence(meta)
    evidenced = [p for p in usable if rel[p] in named]
    base = [p for p in usable if rel[p] in _BASE]
    if evidenced:
        notes.append(f"requirement files named by the project's tox/nox/CI: {[rel[p] for p in evidenced]}")
        chosen = base + [p for p in evidenced if p not in base]
    else:
        testy = [p for p in usable if _TESTY.search(rel[p]) and p not in base]
        chosen = base + (testy or [p for p in usable if _DEVY.search(rel[p]) and p not in base])
    return chosen


def _candidates(root: Path) -> list[Path]:
    found = set(root.glob("*requirements*.txt")) | set(root.glob("*requirements*.in"))
    found |= set(root.glob("requirements/*.txt")) | set(root.glob("requirements/*.in"))
    found |= set(root.glob("*/requirements*.txt")) - set(root.glob("doc*/*"))
    found = {p for p in found if p.is_file()}
    # A pinned (compiled) .txt wins over the .in it was compiled from.
    txt_stems = {p.with_suffix("").as_posix() for p in found if p.suffix == ".txt"}
    return sorted(p for p in found if p.suffix == ".txt" or p.with_suffix("").as_posix() not in txt_stems)


def _evidence(meta: Manifests) -> set[str]:
    """Requirement files the project's own test tooling installs (lower-case paths relative to the root)."""
    texts = []
    for line in lines_of(meta.tox.get("testenv", {}).get("deps", "")):
        if not re.match(r"^[\w,!.-]+:\s", line):  # a factor-conditional line belongs to another environment
            texts.append(line.replace("{toxinidir}/", ""))
    named = {m.lower() for t in texts for m in _INCLUDE.findall(t)}
    noxfile = meta.root / "noxfile.py"
    if noxfile.is_file():
        for m in _NOX_INCLUDE.findall(noxfile.read_text(errors="replace")):
            named.add(m.lower())
    for wf in sorted((meta.root / ".github" / "workflows").glob("*.y*ml"))[:20]:
        for line in wf.read_text(errors="replace").splitlines():
            if "pip install" in line or "uv pip install" in line:
                named |= {m.lower() for m in _INCLUDE.findall(line) if "{" not in m}
    out = set()
    for name in named:
        name = name.lstrip("./")
        out.add(name)
        if name.endswith(".in"):
            out.add(name[:-3] + ".txt")  # its compiled, pinned form when the project has one
    return out


def read(path: Path, root: Path, seen: set[Path] | None = None) -> list[str]:
    """Requirement lines of a file, `-r`/`-c` includes inlined; local paths and editables dropped."""
    seen = set() if seen is None else seen
    inside(path, root, f"requirement file {_rel(path, root)}")
    path = path.resolve()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip().rstrip("\\").strip()
        if not line:
            continue
        m = re.match(r"^(-r|--requirement|-c|--constraint)\s*=?\s*(\S+)", line)
        if m:
            if "://" in m[2]:
                continue  # a remote include: not the repository's own file
            target = path.parent / m[2]
            inside(target, root, f"{_rel(path, root)}: include {line!r}")
            out += read(target, root, seen)
            continue
        if line.startswith(("-", ".")) or "/" in line.split(";")[0] and "://" not in line:
            continue  # -e ., --hash options, local paths: not installable without the code
        out.append(line)
    return out


def inside(path: Path, root: Path, what: str) -> None:
    """Refuse a path that resolves outside the repository tree (`..` or a symlink out)."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise DetectError(f"{what} leaves the repository tree (resolves to {path.resolve()}): refused")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
