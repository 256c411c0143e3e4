"""A source tree's manifests, read once: pyproject.toml, setup.cfg, setup.py (its literal setup() keywords),
tox.ini, PKG-INFO. Detection reads them; nothing here runs the repository's code."""

from __future__ import annotations

import ast
import configparser
import copy
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
            # pip's default for a project without [build-system] is setuptools>=40.8.0; reading a [project]
            # table needs 61. No newer floor: an old commit resolves as of its date, when 61 did not exist.
            self.build_requires = ["setuptools>=61" if self.project else "setuptools>=40.8.0", "wheel"]
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

    Keywords may also be built from module-level names as many setup.py files do (`requires = [...]`,
    `EXTRAS["tests"] = EXTRAS["base"] + ["x"]`, `install_requires=requires`): a tiny evaluator follows
    top-level assignments of literals, names, subscripts and `+`; it runs nothing.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    env: dict[str, object] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], _evaluate(stmt.value, env)
            if value is _UNKNOWN:
                continue
            if isinstance(target, ast.Name):
                env[target.id] = value
            elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                container, key = env.get(target.value.id), _evaluate(target.slice, env)
                if isinstance(container, dict) and isinstance(key, str):
                    container[key] = value
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup":
            out = {}
            for kw in node.keywords:
                value = _evaluate(kw.value, env)
                if value is not _UNKNOWN:
                    out[kw.arg] = value
            return out
    return {}


_UNKNOWN = object()


def _evaluate(node: ast.expr, env: dict[str, object]) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        pass
    if isinstance(node, ast.Name):
        value = env.get(node.id, _UNKNOWN)
        return copy.deepcopy(value) if value is not _UNKNOWN else _UNKNOWN
    if isinstance(node, ast.Subscript):
        container, key = _evaluate(node.value, env), _evaluate(node.slice, env)
        try:
            return container[key] if container is not _UNKNOWN and key is not _UNKNOWN else _UNKNOWN
        except (KeyError, IndexError, TypeError):
            return _UNKNOWN
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(node.left, env), _evaluate(node.right, env)
        if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            return list(left) + list(right)
        return _UNKNOWN
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate(e, env) for e in node.elts]
        return _UNKNOWN if any(i is _UNKNOWN for i in items) else items
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys = [_evaluate(k, env) for k in node.keys]
        values = [_evaluate(v, env) for v in node.values]
        if any(x is _UNKNOWN for x in keys + values):
            return _UNKNOWN
        return dict(zip(keys, values))
    return _UNKNOWN


def setup_kw_str(source: str, key: str) -> str | None:
    value = setup_kwargs(source).get(key)
    return value if isinstance(value, str) else None
