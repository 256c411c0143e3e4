"""The two image layers above the base, their content-addressed tags, and `docker build` through the Engine API.

deps layer  forager/deps-<name>:<hash12>  hash of (python, base tag, requirement lines, system packages)
repo layer  forager/repo-<name>:<hash12>  hash of (deps hash, commit, install commands and env)

A tag that already exists is never rebuilt: same inputs, same image.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from forager.config import base_image_tag

# Bump when the rendered Dockerfiles change meaning, so old tags are not mistaken for new ones.
BUILDER_VERSION = "2"
# Marks every intermediate image of our builds, so pruning touches only our leftovers.
BUILD_LABEL = "forager.build"

# `bash -lc` runs /etc/profile, which resets PATH on Debian: put the venv back for login shells too.
_PROFILE_FIX = "printf 'export PATH=/opt/venv/bin:$PATH\\n' > /etc/profile.d/forager-venv.sh"
# Untracked build and test by-products must not show up in `git status` or an agent's diff.
_GIT_EXCLUDES = r"__pycache__/\n*.py[cod]\n.pytest_cache/\n*.egg-info/\n.eggs/\n"


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps([BUILDER_VERSION, *parts], sort_keys=True).encode()).hexdigest()


def deps_key(python: str, requirements: list[str], system_packages: list[str], build_requirements: list[str] = ()) -> str:
    return _hash("deps", python, base_image_tag(python), list(build_requirements), requirements, sorted(system_packages))


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


def deps_dockerfile(python: str, system_packages: list[str], key: str) -> str:
    # No repo name here: identical dependencies give an identical layer, shared through Docker's cache.
    lines = [f"FROM {base_image_tag(python)}", _label_line({BUILD_LABEL: "1", "forager.kind": "deps", "forager.deps_hash": key})]
    if system_packages:
        pkgs = " ".join(shlex.quote(p) for p in system_packages)
        lines.append(
            f"RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends {pkgs} && rm -rf /var/lib/apt/lists/*"
        )
    # Build backends are upgraded to what an isolated build would fetch (the base venv's old setuptools
    # cannot read newer pyproject metadata); then runtime and test deps, pytest included.
    lines += [
        "COPY build-requirements.txt requirements.txt /opt/forager/",
        f"RUN {_PROFILE_FIX}"
        " && python -m pip install --no-cache-dir --progress-bar off --upgrade -r /opt/forager/build-requirements.txt"
        " && python -m pip install --no-cache-dir --progress-bar off -r /opt/forager/requirements.txt",
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
    """`docker build --network host` of `context`, streaming the output to `log`; BuildError on failure."""
    output: list[str] = []
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            network_mode="host",  # pip needs the index at build time; containers that run tests get none
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
