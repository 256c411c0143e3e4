"""The agent's patch, computed by the server from file contents alone.

Nothing in the agent's container is asked: its tree is read through Docker's archive API (the daemon
reads the container's filesystem, so no binary, git config, attribute, hook or `git replace` the agent
wrote is in the path), compared with the image's tree file by file, and the few files that differ are
diffed on this host by the server's own git (`git diff --no-index`, no repository, no config, no
attributes) against their base versions (the image with the task's setup patch applied).

Left out: the repository's `.git`, and the caches the server names (CACHES), which builds and test runs
leave behind. Everything else that differs is in the patch: untracked files whatever any ignore file
says, binary files (git's binary patch format), modes and symlinks.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", ".tox", ".nox", ".eggs"}
CACHE_SUFFIXES = (".pyc", ".pyo")
CACHE_FILES = {".coverage"}
CACHES = "directories " + ", ".join(sorted(CACHE_DIRS)) + "; *.egg-info; files *.pyc, *.pyo, .coverage"
_GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent",
            "GIT_ATTR_NOSYSTEM": "1", "LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class PatchTooLarge(Exception):
    """The agent's changes are over the server's cap (graded 0, never read whole into memory)."""


@dataclass(frozen=True)
class Entry:
    """One file of a tree as git sees it: a regular file (with or without its exec bit) or a symlink."""

    kind: str  # "f" or "l"
    mode: int  # 0o644, 0o755 (files) or 0o777 (links)
    digest: str  # sha1 of the content, or of the link target

    @property
    def git_mode(self) -> str:
        return "120000" if self.kind == "l" else "100755" if self.mode & 0o111 else "100644"


def is_cache(path: str) -> bool:
    parts = path.split("/")
    if any(p in CACHE_DIRS or p.endswith(".egg-info") for p in parts[:-1]) or parts[-1] in CACHE_DIRS:
        return True
    return parts[-1].endswith(CACHE_SUFFIXES) or parts[-1] in CACHE_FILES or parts[-1].endswith(".egg-info")


def relative(member_name: str) -> str | None:
    """`repo/pkg/x.py` (Docker names members under the directory's own name) → `pkg/x.py`; None for the root."""
    _, sep, rest = member_name.partition("/")
    return rest.rstrip("/") if sep and rest.strip("/") else None


def read_tree(members, *, want: set[str] | None = None, base: dict[str, Entry] | None = None,
              cap: int | None = None) -> tuple[dict[str, Entry], dict[str, tuple[tarfile.TarInfo, bytes]]]:
    """A tree's entries from a streamed tar, and the content of the files worth keeping.

    Kept: files in `want`, and files whose entry differs from `base`. `cap` bounds the kept bytes (and any
    one file's size, checked from its header before reading it): past it, PatchTooLarge.
    """
    entries: dict[str, Entry] = {}
    kept: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    total = 0
    for member, tar in members:
        path = relative(member.name)
        if path is None or path == ".git" or path.startswith(".git/") or is_cache(path):
            continue
        if member.issym():
            target = member.linkname.encode()
            entry = Entry("l", 0o777, hashlib.sha1(target).hexdigest())
            data = target
        elif member.isfile():
            if cap is not None and member.size > cap:
                raise PatchTooLarge(f"{path} is {member.size} bytes, over the patch cap of {cap} bytes")
            data = tar.extractfile(member).read()
            entry = Entry("f", 0o755 if member.mode & 0o111 else 0o644, hashlib.sha1(data).hexdigest())
        else:
            continue  # directories, devices, fifos: git has no place for them
        entries[path] = entry
        if (want and path in want) or (base is not None and base.get(path) != entry):
            total += len(data)
            if cap is not None and total > cap:
                raise PatchTooLarge(f"the changed files hold over {cap} bytes (the patch cap)")
            kept[path] = (member, data)
    return entries, kept


def changed_paths(base: dict[str, Entry], agent: dict[str, Entry], also: set[str]) -> set[str]:
    """Paths whose base and agent versions may differ: changed or added, removed, and `also` (the setup patch's)."""
    return {p for p, e in agent.items() if base.get(p) != e} | {p for p in base if p not in agent} | set(also)


def patch_paths(patch: str) -> set[str]:
    """The paths a git patch touches (both sides of each file)."""
    paths = set()
    for line in patch.splitlines():
        if line.startswith(("--- a/", "+++ b/")):
            paths.add(_unquote(line[6:].split("\t")[0]))
        elif line.startswith("diff --git "):
            m = re.match(r'diff --git "?a/(.+?)"? "?b/(.+?)"?$', line)
            if m:
                paths.update({_unquote(m[1]), _unquote(m[2])})
    return paths


def _unquote(path: str) -> str:
    if path.startswith('"') and path.endswith('"'):
        return path[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode()
    return path


def diff(old: dict[str, tuple[tarfile.TarInfo, bytes]], new: dict[str, tuple[tarfile.TarInfo, bytes]],
         paths: set[str]) -> bytes:
    """A `git apply`-able patch taking the `old` versions of `paths` to the `new` ones (absent = deleted/added).

    The patch is UTF-8 text: a file that is not UTF-8 text goes in git's binary patch format (base85), so the
    patch the server grades and the one it returns and records are the same bytes.
    """
    with tempfile.TemporaryDirectory(prefix="forager-diff-") as tmp:
        root = Path(tmp)
        binary = []
        for side, files in (("old", old), ("new", new)):
            (root / side).mkdir()
            for path in sorted(paths):
                if path in files:
                    _write(root / side, path, *files[path])
                    if not _utf8(files[path][1]):
                        binary.append(_attr_pattern(f"{side}/{path}"))
        (root / ".attributes").write_bytes(b"".join(p + b" -diff\n" for p in binary))
        proc = subprocess.run(
            ["git", "-c", "core.quotePath=false", "-c", f"core.attributesFile={root / '.attributes'}", "diff",
             "--no-index", "--binary", "--full-index", "--no-renames", "--no-textconv", "--no-ext-diff", "--no-color",
             "--src-prefix=a/", "--dst-prefix=b/", "old", "new"],
            cwd=root, capture_output=True, env={**_GIT_ENV, "GIT_CEILING_DIRECTORIES": str(root.parent)}, timeout=300,
        )
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"git diff failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        return rename_sides(proc.stdout)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _attr_pattern(path: str) -> bytes:
    """A gitattributes pattern for exactly this path: any byte outside a safe set becomes `?`."""
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-"
    return bytes(c if c in safe else ord("?") for c in path.encode())


def _write(root: Path, path: str, info: tarfile.TarInfo, data: bytes) -> None:
    target = root / path
    if ".." in Path(path).parts or path.startswith("/"):
        raise ValueError(f"refusing a path outside the tree: {path!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if info.issym():
        os.symlink(data.decode(errors="surrogateescape"), target)
    else:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if info.mode & 0o111 else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


_SIDES = (b"a/old/", b"a/new/", b"b/old/", b"b/new/")


def rename_sides(raw: bytes) -> bytes:
    """`git diff --no-index old new` names files `a/old/x`, `b/new/x`: make them `a/x`, `b/x` in the headers
    only (a hunk's content lines are left alone, even when they start with `---`)."""
    out, in_header = [], False
    for line in raw.splitlines(keepends=True):
        if line.startswith(b"diff --git "):
            in_header = True
            line = _diff_git_line(line)
        elif line.startswith((b"@@", b"GIT binary patch")):
            in_header = False
        elif in_header and line.startswith((b"--- ", b"+++ ")):
            line = line[:4] + _strip_side(line[4:])
        out.append(line)
    return b"".join(out)


def _strip_side(text: bytes) -> bytes:
    """`a/old/x` → `a/x` (also inside quotes) at the start of `text`."""
    quote = text[:1] == b'"'
    body = text[1:] if quote else text
    for side in _SIDES:
        if body.startswith(side):
            return (b'"' if quote else b"") + body[:2] + body[len(side):]
    return text


def _diff_git_line(line: bytes) -> bytes:
    """`diff --git a/old/P b/new/P`: both sides name the same P, which fixes where the second one starts
    (a path may itself hold ' b/')."""
    rest = line[len(b"diff --git "):].rstrip(b"\n")
    quoted = rest.startswith(b'"')
    overhead = len(b'"a/old/" "b/new/"') if quoted else len(b"a/old/ b/new/")
    p_len = (len(rest) - overhead) // 2
    cut = p_len + (len(b'"a/old/"') if quoted else len(b"a/old/"))
    first, second = rest[:cut], rest[cut + 1:]
    return b"diff --git " + _strip_side(first) + b" " + _strip_side(second) + b"\n"
