"""The two layers of one repository image, built with what they turn out to need.

The toolchain (a compiler and the chosen Python's headers, plus detected -dev libraries) goes into the
dependency layer only when needed: when detection found compiled code, or when a first build without it
failed for want of a compiler (a dependency with no wheel for this Python, an extension detection missed).
A build that fails on a missing header whose Debian package we know is retried once with that package.
Whatever still fails gets a failure class from its log (images.failures): toolchain, system_library,
resolution or install.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

from docker.errors import BuildError

from images import layers
from images.detect import Detection
from images.failures import classify, missing_compiler, network_error
from images.toolchain import packages_for_headers

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LayerFailure(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def build_layers(client, name: str, commit: str, det: Detection, date: str | None, tree: Path, workspace: Path,
                 labels: dict[str, str], log, *, force: bool = False, no_cache: bool = False, uv_version: str = "",
                 tag_lock=None) -> tuple[str, str]:
    """Build (or reuse) the deps and repo layers; returns (deps tag, repo tag). Raises LayerFailure."""
    recipe = layers.DepsRecipe(python=det.python, system_packages=list(det.system_packages), toolchain=det.toolchain,
                               rust=det.rust, libraries=list(det.libraries) if det.toolchain else [], date=date,
                               uv_version=uv_version)
    lock = tag_lock or (lambda _tag: _NoLock())
    if not det.toolchain and not force:
        # A commit of this repo needed the toolchain before: start from that layer rather than fail again.
        with_tc = replace(recipe, toolchain=True, libraries=list(det.libraries))
        if not layers.image_exists(client, _deps_tag(name, det, recipe)) and layers.image_exists(client, _deps_tag(name, det, with_tc)):
            log("deps layer: a toolchain variant of this layer exists (an earlier build needed it): using it")
            recipe = with_tc
    network_retried = False
    for attempt in range(4):
        try:
            deps = _deps_layer(client, name, det, recipe, workspace, log, lock, force, no_cache)
            tag = _repo_layer(client, name, commit, det, deps, tree, workspace, labels, log, lock, force, no_cache)
            return deps, tag
        except _Failed as failed:
            text = failed.text
            extra = sorted(set(packages_for_headers(text)) - set(recipe.libraries))
            if not network_retried and network_error(text) and classify(text)[0] in ("install", "error"):
                network_retried = True
                log(f"{failed.stage} layer failed on the network or Docker ({failed.summary[:200]}): one more try in 20 s")
                time.sleep(20)
            elif attempt < 3 and not recipe.toolchain and missing_compiler(text):
                log(f"{failed.stage} layer failed for want of a compiler: retrying with the toolchain")
                recipe = replace(recipe, toolchain=True, libraries=sorted(set(det.libraries)))
            elif attempt < 3 and extra:
                log(f"{failed.stage} layer failed on missing headers: retrying with {extra}")
                recipe = replace(recipe, toolchain=True, libraries=sorted(set(recipe.libraries) | set(extra)))
            else:
                status, line = classify(text)
                where = f" as of {date[:10]}" if date and status == "resolution" else ""
                raise LayerFailure(status, f"{failed.stage} layer failed{where}: {line or failed.summary}") from None
    raise AssertionError("unreachable")


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Failed(Exception):
    def __init__(self, stage: str, exc: BuildError):
        self.stage = stage
        self.text = _ANSI.sub("", "".join(str(c.get("stream", "")) if isinstance(c, dict) else str(c) for c in (exc.build_log or [])))
        self.text += "\n" + _ANSI.sub("", str(exc.msg))
        self.summary = last_error(self.text, str(exc.msg))


def _key(det: Detection, recipe: layers.DepsRecipe) -> str:
    return layers.deps_key(det.python, det.requirements, recipe.system_packages, det.build_requirements, date=recipe.date,
                           toolchain=recipe.toolchain, rust=recipe.rust and recipe.toolchain, libraries=recipe.libraries)


def _deps_tag(name: str, det: Detection, recipe: layers.DepsRecipe) -> str:
    return layers.deps_tag(name, _key(det, recipe))


def _deps_layer(client, name, det, recipe, workspace, log, lock, force, no_cache) -> str:
    key = _key(det, recipe)
    tag = layers.deps_tag(name, key)
    with lock(tag):
        if layers.image_exists(client, tag) and not force:
            log(f"deps layer reused: {tag}")
            return tag
        ctx = layers.write_context(
            workspace / "deps",
            {
                "Dockerfile": layers.deps_dockerfile(recipe, key),
                "build-requirements.txt": "".join(f"{r}\n" for r in det.build_requirements),
                "requirements.txt": "".join(f"{r}\n" for r in det.requirements),
            },
        )
        what = ", ".join(filter(None, ["toolchain" if recipe.toolchain else "", "cargo" if recipe.rust and recipe.toolchain else "",
                                       f"libraries {recipe.libraries}" if recipe.libraries else "",
                                       f"resolved as of {recipe.date}" if recipe.date else "resolved as of today"]))
        log(f"deps layer: building {tag} ({what})\n--- requirements.txt\n" + "\n".join(det.requirements))
        try:
            layers.docker_build(client, ctx, tag, log, no_cache=no_cache)
        except BuildError as exc:
            raise _Failed("dependency", exc) from None
    return tag


def _repo_layer(client, name, commit, det, deps, tree, workspace, labels, log, lock, force, no_cache) -> str:
    key = layers.repo_key(deps.rsplit(":", 1)[1], commit, det.install, det.install_env)
    tag = layers.repo_tag(name, key)
    with lock(tag):
        if layers.image_exists(client, tag) and not force:
            log(f"repo layer reused: {tag}")
            return tag
        dockerfile = layers.repo_dockerfile(deps, name, commit, det.install, det.install_env, labels)
        # The tree is moved into the context: keep a copy for a retry.
        ctx = layers.write_context(workspace / "repo-ctx", {"Dockerfile": dockerfile})
        _copy_tree(tree, ctx / "repo")
        log(f"repo layer: building {tag}\n--- Dockerfile\n{dockerfile}")
        try:
            layers.docker_build(client, ctx, tag, log, no_cache=no_cache)
        except BuildError as exc:
            raise _Failed("repository", exc) from None
    return tag


def _copy_tree(src: Path, dest: Path) -> None:
    import shutil

    shutil.copytree(src, dest, symlinks=True)


def last_error(text: str, verdict: str) -> str:
    """The most telling lines of a failed build: a Python exception, the tool's error, Docker's verdict."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.search(r"\b\w+(Error|Exception)\b: ", ln)]
    tool = [ln for ln in lines if re.match(r"(ERROR|error|E|×)[: ]", ln)]
    verdict = _ANSI.sub("", verdict).strip().splitlines()[-1] if verdict.strip() else "docker build failed"
    return "; ".join(dict.fromkeys([*raised[-1:], *tool[-1:], verdict]))[:800]
