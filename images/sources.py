"""Repository lists and sources: parse a list into RepoSpecs, and turn a spec into a commit in a local mirror.

Every source ends up the same way: a git repository under $FORAGER_HOME/mirrors and a commit SHA in it.
GitHub and git URLs are mirrored (bare, `git clone --mirror`); a pinned ref already in the mirror is used
without touching the network, so a second build of the same list fetches nothing. A `pypi:NAME==VERSION`
sdist and a local directory that is not a git repo become a one-commit repo whose commit is
deterministic (fixed identity and dates), so the same sdist always has the same SHA.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import zipfile
from pathlib import Path

import git
import yaml

from forager.errors import SourceError
from forager.models import RepoSpec

# Fields a YAML/TOML entry may set besides `source`.
OVERRIDE_FIELDS = {"python", "install", "test_command", "system_packages"}

_GITHUB = re.compile(r"^(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+)$")
_PYPI = re.compile(r"^pypi:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:==(?P<version>[A-Za-z0-9.+!_-]+))?$")
_URL_PREFIXES = ("https://", "http://", "ssh://", "git://", "file://", "git@")
# Deterministic commits for sdists and plain directories: same tree, same SHA.
_FIXED_COMMIT_ENV = {
    "GIT_AUTHOR_NAME": "forager",
    "GIT_AUTHOR_EMAIL": "forager@localhost",
    "GIT_COMMITTER_NAME": "forager",
    "GIT_COMMITTER_EMAIL": "forager@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}



# ---------------------------------------------------------------- parsing


def tag_safe(name: str) -> str:
    """A Docker-tag-safe short name: lowercase letters, digits, '.', '_' and '-'."""
    name = re.sub(r"\.git$", "", name.strip().rstrip("/")).lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", name).strip("._-")
    return name or "repo"


def local_name(path: Path) -> str:
    """A local repository's short name: its folder's, or its parent's when the folder has a generic name
    (`owner+name/repo`, `name/.git`); `owner+name` keeps the name."""
    name = path.name
    if name.lower() in ("repo", ".git", "git", "mirror") and path.parent.name:
        name = path.parent.name
    return tag_safe(name.split("+")[-1])


def _split_ref(text: str) -> tuple[str, str | None]:
    # The ref is what follows the last '@' when that '@' is after the last '/' or ':' (so `git@host:x`
    # keeps its user part); a ref may therefore not contain '/'.
    at = text.rfind("@")
    if at > max(text.rfind("/"), text.rfind(":")):
        ref = text[at + 1 :]
        if not ref:
            raise ValueError(f"empty ref after '@' in {text!r}")
        return text[:at], ref
    return text, None


def parse_entry(entry: str, *, base_dir: Path | None = None, line: int | None = None, **overrides) -> RepoSpec:
    """Parse one list entry (`owner/name[@ref]`, a git URL or local path with `@ref`, `pypi:NAME==VERSION`)."""
    text = entry.strip()
    if not text:
        raise ValueError("empty entry")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"unexpected whitespace in entry {text!r}")
    unknown = set(overrides) - OVERRIDE_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: source, {', '.join(sorted(OVERRIDE_FIELDS))}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(overrides.get("install"), str):
        overrides["install"] = [overrides["install"]]
    if "python" in overrides:
        overrides["python"] = str(overrides["python"])
    common = dict(source=text, line=line, **overrides)

    if text.startswith("pypi:"):
        m = _PYPI.match(text)
        if not m:
            raise ValueError(f"bad PyPI entry {text!r}: expected pypi:NAME==VERSION")
        if not m["version"]:
            raise ValueError(f"PyPI entry {text!r} must pin a version: pypi:NAME==VERSION")
        return RepoSpec(kind="pypi", location=m["name"], ref=m["version"], name=tag_safe(m["name"]), **common)

    if text.startswith(_URL_PREFIXES) or text.endswith(".git") and ("://" in text or text.startswith("git@")):
        url, ref = _split_ref(text)
        name = re.split(r"[/:]", url.rstrip("/"))[-1]
        return RepoSpec(kind="git", location=url, ref=ref, name=tag_safe(name), **common)

    path_part, ref = _split_ref(text)
    looks_local = path_part.startswith(("/", "./", "../", "~")) or path_part in (".", "..")
    candidate = Path(os.path.expanduser(path_part))
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if looks_local or candidate.exists():
        if not candidate.is_dir():
            raise ValueError(f"local path {path_part!r} is not a directory")
        return RepoSpec(kind="local", location=str(candidate.resolve()), ref=ref, name=local_name(candidate.resolve()), **common)

    m = _GITHUB.match(path_part)
    if m:
        return RepoSpec(kind="github", location=f"https://github.com/{m['owner']}/{m['name']}.git", ref=ref, name=tag_safe(m["name"]), **common)
    raise ValueError(f"unrecognised entry {text!r}: expected owner/name[@ref], a git URL or local path [@ref], or pypi:NAME==VERSION")


def parse_list(path: str | Path) -> tuple[list[RepoSpec], list[str]]:
    """Read a repository list (.txt, or .yaml/.yml/.toml with overrides).

    Returns the specs that parsed and one message per malformed entry (`file:line: why`); a bad entry
    never stops the others.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        return _parse_structured(path, _yaml_entries(text))
    if path.suffix == ".toml":
        data = tomllib.loads(text)
        entries = data.get("repos", data.get("repo"))
        if not isinstance(entries, list):
            return [], [f"{path}: expected a [[repos]] array of tables"]
        return _parse_structured(path, [(None, e) for e in entries])
    specs, errors = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            specs.append(parse_entry(line, base_dir=path.parent, line=number))
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
    return specs, errors


def _yaml_entries(text: str) -> list[tuple[int | None, object]]:
    """Top-level list (or {repos: [...]}) of entries, each with its 1-based line number."""
    node = yaml.compose(text)
    if node is None:
        return []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value in ("repos", "repo"):
                node = value
                break
    if not isinstance(node, yaml.SequenceNode):
        raise ValueError("expected a YAML list of entries (or a mapping with a `repos` list)")
    loader_data = yaml.safe_load(text)
    items = loader_data if isinstance(loader_data, list) else loader_data.get("repos", loader_data.get("repo"))
    return [(child.start_mark.line + 1, item) for child, item in zip(node.value, items)]


def _parse_structured(path: Path, entries: list[tuple[int | None, object]]) -> tuple[list[RepoSpec], list[str]]:
    specs, errors = [], []
    for index, (line, item) in enumerate(entries, start=1):
        where = f"{path}:{line}" if line else f"{path}: entry {index}"
        try:
            if isinstance(item, str):
                specs.append(parse_entry(item, base_dir=path.parent, line=line))
            elif isinstance(item, dict) and isinstance(item.get("source"), str):
                fields = {k: v for k, v in item.items() if k != "source"}
                specs.append(parse_entry(item["source"], base_dir=path.parent, line=line, **fields))
            else:
                raise ValueError("an entry is a string or a mapping with a `source` string")
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            errors.append(f"{where}: {exc}")
    return specs, errors


# ---------------------------------------------------------------- fetching

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mirror_path(spec: RepoSpec, mirrors: Path) -> Path:
    if spec.kind == "pypi":
        return mirrors / "pypi" / f"{spec.name}-{spec.ref}"
    return mirrors / f"{spec.name}-{_key(spec.location)}.git"


def fetch(spec: RepoSpec, mirrors: Path, log=print) -> tuple[git.Repo, str]:
    """Make sure the spec's commit is in a local mirror; return (mirror repo, commit SHA)."""
    mirrors.mkdir(parents=True, exist_ok=True)
    path = mirror_path(spec, mirrors)
    with _lock(str(path)):
        try:
            if spec.kind == "pypi":
                return _fetch_pypi(spec, path, log)
            if spec.kind == "local" and not path.exists() and not _is_git_dir(Path(spec.location)):
                if not Path(spec.location).is_dir():
                    raise SourceError(f"{spec.location} does not exist")
                if spec.ref:
                    raise SourceError(f"{spec.location} is not a git repository, so it has no ref {spec.ref!r}")
                return _snapshot_dir(Path(spec.location), mirrors / "snapshots" / path.name.removesuffix(".git"), log)
            return _fetch_git(spec, path, log)
        except git.GitCommandError as exc:
            raise SourceError(f"git failed for {spec.source}: {exc.stderr.strip() or exc}") from exc


def _is_git_dir(path: Path) -> bool:
    try:
        git.Repo(path)
        return True
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return False


def _fetch_git(spec: RepoSpec, path: Path, log) -> tuple[git.Repo, str]:
    if path.exists():
        repo = git.Repo(path)
        sha = _resolve(repo, spec.ref)
        # A SHA or tag already mirrored cannot change: no network. Branches (and no ref) move: fetch.
        if sha and spec.ref and not _is_branch(repo, spec.ref):
            log(f"mirror hit: {spec.ref} -> {sha} in {path}")
            return repo, sha
        log(f"fetching {spec.location} into {path}")
        repo.git.fetch("--prune", "origin")  # a mirror's refspec is +refs/*:refs/*
    else:
        log(f"cloning {spec.location} into {path}")
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        git.Repo.clone_from(spec.location, tmp, mirror=True, env={"GIT_TERMINAL_PROMPT": "0"})
        tmp.rename(path)  # a killed clone never leaves a half mirror behind
        repo = git.Repo(path)
    sha = _resolve(repo, spec.ref)
    if not sha:
        raise SourceError(f"ref {spec.ref or 'HEAD'!r} not found in {spec.location}")
    return repo, sha


def _resolve(repo: git.Repo, ref: str | None) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"{ref or 'HEAD'}^{{commit}}").strip() or None
    except git.GitCommandError:
        return None


def _is_branch(repo: git.Repo, ref: str) -> bool:
    return any(h.name == ref for h in repo.heads)


def _commit_tree(src: Path, path: Path, message: str) -> tuple[git.Repo, str]:
    """Copy `src` into a fresh one-commit repo at `path` with a deterministic commit."""
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    repo = git.Repo.init(tmp, initial_branch="main")
    with repo.git.custom_environment(**_FIXED_COMMIT_ENV):
        repo.git.add("-A", "-f")  # -f: the sdist is the source of truth, even what its .gitignore names
        repo.git.commit("-q", "--no-verify", "--allow-empty", "-m", message)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    repo = git.Repo(path)
    return repo, repo.head.commit.hexsha


def _snapshot_dir(src: Path, path: Path, log) -> tuple[git.Repo, str]:
    log(f"snapshotting plain directory {src}")
    return _commit_tree(src, path, f"snapshot of {src.name}")


def _fetch_pypi(spec: RepoSpec, path: Path, log) -> tuple[git.Repo, str]:
    if path.exists():
        repo = git.Repo(path)
        log(f"mirror hit: pypi {spec.location}=={spec.ref} in {path}")
        return repo, repo.head.commit.hexsha
    requirement = f"{spec.location}=={spec.ref}"
    with tempfile.TemporaryDirectory(prefix="forager-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp, requirement]
        log("$ " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        log(proc.stdout + proc.stderr)
        archives = [p for p in Path(tmp).iterdir() if p.suffix in (".gz", ".zip", ".bz2", ".tgz")]
        if proc.returncode != 0 or not archives:
            raise SourceError(f"pip download {requirement} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        root = _unpack(archives[0], Path(tmp) / "unpacked")
        return _commit_tree(root, path, f"{spec.location} {spec.ref} (sdist)")


def _unpack(archive: Path, dest: Path) -> Path:
    """Unpack an sdist and return its single top-level directory (or dest itself)."""
    dest.mkdir()
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    entries = list(dest.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def export_tree(repo: git.Repo, sha: str, dest: Path, log=lambda _m: None) -> Path:
    """Write the files of `sha` (no .git) into `dest`.

    A mirror that lacks some blobs (a partial or size-capped snapshot) cannot be archived whole; then the
    tree is written blob by blob and the missing files are left out, with a log line naming them.
    """
    buf = io.BytesIO()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        repo.archive(buf, sha, format="tar")
    except git.GitCommandError:
        missing = _export_blobs(repo, sha, dest)
        log(f"the mirror lacks {len(missing)} file(s) of {sha[:12]}, left out: {missing[:20]}")
        return dest
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        tf.extractall(dest, filter="tar")
    return dest


def _export_blobs(repo: git.Repo, sha: str, dest: Path) -> list[str]:
    listing = repo.git.ls_tree("-r", "-z", sha).split("\0")
    entries = []
    for item in filter(None, listing):
        meta, path = item.split("\t", 1)
        mode, kind, blob = meta.split()
        if kind == "blob":
            entries.append((mode, blob, path))
    missing = []
    proc = subprocess.Popen(["git", "-C", repo.git_dir, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for mode, blob, path in entries:
            proc.stdin.write(f"{blob}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().decode().split()
            if len(header) < 3 or header[1] != "blob":
                missing.append(path)
                continue
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)  # the newline after the content
            target = (dest / path).resolve()
            if not target.is_relative_to(dest.resolve()):
                continue  # a path that climbs out of the tree
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == "120000":
                target.symlink_to(data.decode())
            else:
                target.write_bytes(data)
                if mode == "100755":
                    target.chmod(0o755)
    finally:
        proc.stdin.close()
        proc.wait()
    return missing
