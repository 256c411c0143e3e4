"""The two image layers above the base, their content-addressed tags, and `docker build` through the Engine API.

deps layer  forager/deps-<name>:<hash12>  hash of (python, base tag, requirement lines, system packages,
            toolchain, the resolution date)
repo layer  forager/repo-<name>:<hash12>  hash of (deps hash, commit, install commands and env)

A tag that already exists is never rebuilt: same inputs, same image. The resolution date is the first
day of the month after the commit, so the commits of a month with the same requirements share one layer.

Dependencies are installed with uv (`uv pip install --exclude-newer DATE`): it resolves as of a date,
which pip cannot, and it resolves and installs several times faster. The layer builds FROM the tools
image (images.base.ensure_tools_image: the base plus the host's uv binary, made once per Python). uv
does not read pip.conf: the index settings of /etc/pip.conf are passed as flags, and it verifies TLS
with SSL_CERT_FILE, which the base image sets to the host's CA bundle.
Builds run on the default bridge network (never the host's): see images/base.py.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from forager.config import base_image_tag
from images.base import BUILD_NETWORK, host_pip_conf, tools_image_tag
from images.toolchain import RUST_PACKAGES, TOOLCHAIN_PACKAGES

# Bump when the rendered Dockerfiles change meaning, so old tags are not mistaken for new ones.
BUILDER_VERSION = "3"
# Marks every intermediate image of our builds, so pruning touches only our leftovers.
BUILD_LABEL = "forager.build"

# `bash -lc` runs /etc/profile, which resets PATH on Debian: put the venv back for login shells too.
_PROFILE_FIX = "printf 'export PATH=/opt/venv/bin:$PATH\\n' > /etc/profile.d/forager-venv.sh"
# Untracked build and test by-products must not show up in `git status` or an agent's diff.
_GIT_EXCLUDES = r"__pycache__/\n*.py[cod]\n.pytest_cache/\n*.egg-info/\n.eggs/\n"


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps([BUILDER_VERSION, *parts], sort_keys=True).encode()).hexdigest()


def deps_key(python: str, requirements: list[str], system_packages: list[str], build_requirements: list[str] = (),
             *, date: str | None = None, toolchain: bool = False, rust: bool = False, libraries: list[str] = ()) -> str:
    parts: list = ["deps", python, base_image_tag(python), list(build_requirements), requirements, sorted(system_packages)]
    if date or toolchain or rust or libraries:  # keys of plain, undated layers stay as they were computed
        parts.append({"date": date, "toolchain": toolchain, "rust": rust, "libraries": sorted(libraries)})
    return _hash(*parts)


def repo_key(deps_hash: str, commit: str, install: list[str], install_env: dict[str, str]) -> str:
    return _hash("repo", deps_hash, commit, install, install_env)


def deps_tag(name: str, key: str) -> str:
    return f"forager/deps-{name}:{key[:12]}"


def repo_tag(name: str, key: str) -> str:
    return f"forager/repo-{name}:{key[:12]}"


def _label_line(labels: dict[str, str]) -> str:
    # One LABEL instruction: the classic builder runs a container per instruction, so labels passed one
    # by one (or through the API) cost a container each.
    return "LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))


@dataclass
class DepsRecipe:
    """What the dependency layer installs besides the requirement files."""

    python: str
    system_packages: list[str] = field(default_factory=list)  # the entry's override: must all install
    toolchain: bool = False
    rust: bool = False
    libraries: list[str] = field(default_factory=list)  # detected: skipped where the release lacks them
    date: str | None = None  # resolve as of this instant (RFC 3339), None: today
    uv_version: str = ""


def uv_index_flags() -> list[str]:
    """The index settings the image's /etc/pip.conf carries, as uv flags (uv does not read pip.conf)."""
    flags = []
    for line in host_pip_conf().splitlines():
        key, _, value = (p.strip() for p in line.partition("="))
        if key in ("index-url", "extra-index-url"):
            flags += [f"--{key}={url}" for url in value.split()]
        elif key == "trusted-host":
            flags += [f"--allow-insecure-host={host}" for host in value.split()]
    if any(f.startswith("--extra-index-url") for f in flags):
        flags.append("--index-strategy=unsafe-best-match")  # pip's behaviour with several indexes
    return flags


def deps_dockerfile(recipe: DepsRecipe, key: str) -> str:
    # No repo name here: identical dependencies give an identical layer, shared through Docker's cache.
    labels = {BUILD_LABEL: "1", "forager.kind": "deps", "forager.deps_hash": key}
    if recipe.date:
        labels["forager.deps.date"] = recipe.date
    # The label goes last: the toolchain step above it is then the same instruction on the same parent for
    # every project with the same packages, and Docker's build cache shares that layer between them.
    lines = [f"FROM {tools_image_tag(recipe.python, recipe.uv_version)}"]
    strict = " ".join(shlex.quote(p) for p in recipe.system_packages)
    if recipe.toolchain or recipe.libraries:
        wanted = (TOOLCHAIN_PACKAGES + (RUST_PACKAGES if recipe.rust else [])) if recipe.toolchain else []
        optional = " ".join(shlex.quote(p) for p in recipe.libraries)
        lines.append(
            "RUN apt-get update -qq"
            f" && pkgs={shlex.quote(' '.join(wanted))}"
            # The chosen Python's headers: Debian's python3-dev where the venv is Debian's python3.
            + (' && if [ -x /usr/bin/python3 ]; then pkgs="$pkgs python3-dev"; fi' if recipe.toolchain else "")
            # Only packages this release can install: a name apt merely knows (Ubuntu's libjpeg-turbo8-dev,
            # a virtual package) has "Candidate: (none)".
            + (f' && for p in {optional}; do if apt-cache policy "$p" 2>/dev/null | grep -q "Candidate: [^(]"; then pkgs="$pkgs $p";'
               ' else echo "forager: $p is not in this Debian release: skipped"; fi; done' if optional else "")
            + f" && apt-get install -y -qq --no-install-recommends {strict} $pkgs && rm -rf /var/lib/apt/lists/*"
        )
    elif strict:
        lines.append(
            f"RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends {strict} && rm -rf /var/lib/apt/lists/*"
        )
    # One resolution of build backends, runtime and test deps, pytest(-timeout) and pip itself, all as of
    # the date: an old commit gets the pip and setuptools of its time too (today's cannot build it).
    uv = "/usr/local/bin/uv"
    flags = ["--python=/opt/venv/bin/python", "--no-cache", "--link-mode=copy", "--upgrade", *uv_index_flags()]
    if recipe.date:
        flags.append(f"--exclude-newer={recipe.date}")
    lines += [
        "COPY build-requirements.txt requirements.txt /opt/forager/",
        f"RUN {_PROFILE_FIX}"
        f" && {uv} pip install {' '.join(shlex.quote(f) for f in flags)}"
        " -r /opt/forager/build-requirements.txt -r /opt/forager/requirements.txt pip",
        _label_line(labels),
    ]
    return "\n".join(lines) + "\n"


def repo_dockerfile(deps: str, name: str, commit: str, install: list[str], install_env: dict[str, str], labels: dict[str, str]) -> str:
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(install_env.items()))
    steps = ["cd /repo", *(f"{env}bash -c {shlex.quote(command)}" for command in install)]
    # A fresh one-commit repository: no remotes, branches, reflog or history an agent could mine.
    message = shlex.quote(f"{name} at {commit[:12]}")
    steps += [
        "rm -rf .git && git init -q -b main",
        f"printf '{_GIT_EXCLUDES}' >> .git/info/exclude",
        "git add -A",
        f"git -c user.name=forager -c user.email=forager@localhost commit -q --no-verify -m {message}",
        "rm -rf .git/logs .git/hooks",
        "git status --porcelain | (! grep -q .)",  # the tree must be clean after installing
    ]
    # One RUN: one layer and one build container (rebuilding a new commit is exactly this step). The
    # base image's working directory is already /repo.
    run = " \\\n && ".join(steps)
    label = _label_line({BUILD_LABEL: "1", **labels})
    return f"FROM {deps}\n{label}\nCOPY repo/ /repo/\nRUN {run}\n"


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False


def docker_build(client: docker.DockerClient, context: Path, tag: str, log, no_cache: bool = False) -> None:
    """`docker build` of `context` on the bridge network, streaming the output to `log`; BuildError on failure."""
    output: list[str] = []
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            network_mode=BUILD_NETWORK,  # the index, not the host's loopback; containers that run tests get none
            rm=True,
            nocache=no_cache,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                text = chunk["stream"]
                output.append(text)
                log(text.rstrip("\n"))
            if "error" in chunk:
                log(chunk["error"])
                raise BuildError(chunk["error"].strip(), output)
    except APIError as exc:
        raise BuildError(str(exc), output) from exc


def write_context(path: Path, files: dict[str, str], tree: Path | None = None) -> Path:
    """A fresh build context with `files` and, when given, `tree` copied to repo/."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    if tree is not None:
        shutil.move(str(tree), str(path / "repo"))
    return path
