"""The import rule of docs/architecture.md, checked on every module (function-level imports included):

- nothing in forager/ outside forager/cli/ imports images/ or agent/;
- forager/'s root files (the kernel) import nothing of this repo but each other;
- inside forager/ the layers run one way: cli → interfaces → episodes → trajectories, tasks → trace → kernel
  (viewer reads trajectories, tasks and trace);
- envserver/ imports nothing of the others; everyone else imports only its face
  (client, models, errors, junit, sandbox);
- images/ imports only the forager kernel; agent/ never imports images/ or the CLI.
Plus: one place starts a Docker container, and no module is longer than a reader can hold.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("forager", "images", "envserver", "agent")
KERNEL = {"forager", "forager.models", "forager.config", "forager.errors", "forager.jsonl"}
FACE = {"envserver", "envserver.client", "envserver.models", "envserver.errors", "envserver.junit", "envserver.sandbox"}
# forager domain packages and what each may import inside forager/ (besides the kernel)
LAYERS = {
    "forager.trace": set(),
    "forager.tasks": {"forager.trace"},
    "forager.trajectories": set(),
    "forager.episodes": {"forager.trajectories", "forager.tasks", "forager.trace"},
    "forager.viewer": {"forager.trajectories", "forager.tasks", "forager.trace"},
    "forager.interfaces": {"forager.episodes", "forager.trajectories", "forager.tasks", "forager.trace"},
    "forager.cli": None,  # the roof: anything
}
MAX_LINES = 400
LONG_ALLOWED = {"forager/trace/tracer.py"}  # standalone and stdlib-only: it is copied into images whole


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of this repo's packages in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path, root)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".")[: -node.level] if path.name != "__init__.py" else me.split(".")[: len(me.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.append((node.lineno, name))
    return found


def _is_module(name: str, root: Path) -> bool:
    return (root / Path(*name.split("."))).with_suffix(".py").exists() or (root / Path(*name.split(".")) / "__init__.py").exists()


def _owner(name: str, root: Path) -> str:
    """The module an imported name lives in (`from x import y` names y, which may be a function)."""
    while name and not _is_module(name, root):
        name = name.rpartition(".")[0]
    return name


def violations(root: Path) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            me = module_name(path, root)
            rel = path.relative_to(root).as_posix()
            for line, raw in imports(path, root):
                target = _owner(raw, root) or raw
                why = _rule(me, target)
                if why:
                    out.append(f"{rel}:{line}: imports {target}: {why}")
    return sorted(set(out))


def _rule(me: str, target: str) -> str | None:
    top, dest = me.split(".")[0], target.split(".")[0]
    if top == dest == "envserver":
        return None
    if top == "envserver":
        return "envserver is standalone: it imports nothing of the others"
    if dest == "envserver" and target not in FACE:
        return "only envserver's face (client, models, errors, junit, sandbox) may be imported"
    if top == "forager":
        if me in KERNEL:
            return None if dest == "forager" and target in KERNEL or dest == "envserver" else "the kernel imports only the kernel"
        layer = next((l for l in LAYERS if me == l or me.startswith(l + ".")), None)
        if dest in ("images", "agent"):
            return None if layer == "forager.cli" else "only forager/cli imports images or agent"
        if dest == "forager" and target not in KERNEL and layer != "forager.cli":
            other = next((l for l in LAYERS if target == l or target.startswith(l + ".")), target)
            if other != layer and other not in (LAYERS.get(layer) or set()):
                return f"{layer} may not import {other} (layers run cli → episodes → trajectories, tasks → trace → kernel)"
        return None
    if top == "images":
        if dest == "agent" or (dest == "forager" and target not in KERNEL):
            return "images imports only the forager kernel and envserver's face"
        return None
    if top == "agent":
        if dest == "images" or target.startswith("forager.cli"):
            return "agent imports forager (kernel and domains) and envserver's face, never images or the CLI"
    return None


def test_the_import_rule_holds():
    assert violations(ROOT) == []


def test_the_rule_catches_a_violation(tmp_path):
    """The checker fails where it should: a copy of the tree with one forbidden import in each place."""
    import shutil

    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    bad = {
        "forager/tasks/store.py": "from images.catalog import load_records\n",
        "envserver/pool.py": "from forager.models import Task\n",
        "agent/status.py": "from envserver.envs import Manager\n",
        "forager/trace/models.py": "from forager.episodes.loop import run_episode\n",
        "images/layers.py": "from forager.tasks.store import load_tasks\n",
        "forager/config.py": "import forager.trajectories.store\n",
    }
    for rel, line in bad.items():
        path = tmp_path / rel
        path.write_text(path.read_text() + "\n\ndef _violation():\n    " + line)
    found = violations(tmp_path)
    assert {v.split(":")[0] for v in found} == set(bad), found


def test_one_place_starts_a_container():
    starts = re.compile(r"\.(create_container|containers\.run|containers\.create)\(")
    places = [f"{p.relative_to(ROOT)}:{n}" for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
              for n, line in enumerate(p.read_text().splitlines(), 1) if starts.search(line)]
    assert {p.split(":")[0] for p in places} == {"envserver/docker_backend.py"}, places


def test_modules_stay_short():
    long = {p.relative_to(ROOT).as_posix(): n for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= LONG_ALLOWED, long
