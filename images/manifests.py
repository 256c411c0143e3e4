"""A source tree's manifests, read once: pyproject.toml, setup.cfg, setup.py (its literal setup() keywords),
tox.ini, PKG-INFO. Detection reads them; nothing here runs the repository's code."""

from __future__ import annotations

import ast
import configparser
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

from packaging.utils import canonicalize_name


class Manifests:
    """The manifests of a tree, read once."""

    def __init__(self, root: Path):
        self.root = root
        self.pyproject = read_toml(root / "pyproject.toml")
        self.setup_cfg = read_ini(root / "setup.cfg")
        self.tox = read_ini(root / "tox.ini")
        self.setup_py = (root / "setup.py").read_text(errors="replace") if (root / "setup.py").is_file() else ""
        self.pkg_info = (root / "PKG-INFO").read_text(errors="replace") if (root / "PKG-INFO").is_file() else ""
        self.project = self.pyproject.get("project", {}) if isinstance(self.pyproject.get("project"), dict) else {}
        self.name = canonicalize_name(
            self.project.get("name") or self.setup_cfg.get("metadata", {}).get("name", "") or setup_kw_str(self.setup_py, "name") or ""
        )
        self.installable = bool(self.pyproject.get("build-system") or self.project) or (root / "setup.py").is_file()
        build = self.pyproject.get("build-system", {})
        if build.get("requires"):
            self.build_requires = list(build["requires"])
        elif self.installable:
            self.build_requires = ["setuptools>=61", "wheel"]  # pip's default for setup.py projects
        else:
            self.build_requires = []
        # Editable builds without isolation need what the backend asks for only at build time:
        # `wheel` for setuptools < 70.1, `editables` for hatchling.
        if any(r.lower().startswith("hatchling") for r in self.build_requires):
            self.build_requires = [*self.build_requires, "editables"]
        if any(r.replace("_", "-").lower().startswith("setuptools") and "scm" not in r for r in self.build_requires):
            self.build_requires = [*self.build_requires, "wheel"] if "wheel" not in self.build_requires else self.build_requires


def read_toml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(errors="replace"))
    except tomllib.TOMLDecodeError:
        return {}


def read_ini(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(path.read_text(errors="replace"))
    except configparser.Error:
        return {}
    return {s: dict(parser.items(s)) for s in parser.sections()}


def lines_of(value: str) -> list[str]:
    return [ln.strip() for ln in value.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def setup_kwargs(source: str) -> dict[str, object]:
    """Literal keyword arguments of the setup() call in setup.py (non-literal ones are skipped).

    A keyword given as a name (`install_requires=requires`) takes the literal the module assigned to
    that name at top level (`requires = [...]`), as many setup.py files do.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    assigned: dict[str, ast.expr] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            assigned[stmt.targets[0].id] = stmt.value
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup":
            out = {}
            for kw in node.keywords:
                value = assigned.get(kw.value.id, kw.value) if isinstance(kw.value, ast.Name) else kw.value
                try:
                    out[kw.arg] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    pass
            return out
    return {}


def setup_kw_str(source: str, key: str) -> str | None:
    value = setup_kwargs(source).get(key)
    return value if isinstance(value, str) else None
