"""Detection without a model: from a source tree, choose the Python version, the dependency list, the
install commands and the test command. Per-entry overrides (RepoSpec) win over everything detected.

The dependency list is distilled from the manifests (pyproject, setup.cfg, setup.py, requirements*.txt,
tox.ini) into plain requirement lines, so the dependency layer needs none of the repository's code and
its key changes only when the dependencies do.
"""

from __future__ import annotations

import ast
import configparser
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from forager.models import RepoSpec

TEST_GROUPS = ("test", "tests", "testing")
DEV_GROUPS = ("dev", "develop", "development")
SKIP_DIRS = {".git", ".tox", ".venv", "venv", "node_modules", "build", "dist", "docs", "doc"}
# Editable installs of setuptools_scm/hatch-vcs projects need a version when neither git metadata
# nor PKG-INFO is there (a git checkout is copied without .git).
SCM_BACKENDS = ("setuptools_scm", "setuptools-scm", "hatch-vcs", "hatch_vcs")


class DetectError(Exception):
    """Nothing usable could be detected (failure class `detect`)."""


@dataclass
class Detection:
    python: str
    requirements: list[str]  # the dependency layer: build requirements, runtime and test deps, pytest
    install: list[str]  # shell commands run in /repo in the repository layer
    test_command: str
    test_runner: str  # "pytest", or "unittest" (a unittest suite, run through pytest)
    system_packages: list[str] = field(default_factory=list)
    build_requirements: list[str] = field(default_factory=list)  # installed with --upgrade, as an isolated build would
    install_env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # the evidence, for the build log


def detect(root: Path, spec: RepoSpec, available: list[str]) -> Detection:
    """Detect how to build and test the tree at `root`; `available` lists the local base Python versions."""
    notes: list[str] = []
    meta = _Meta(root)
    python = choose_python(meta, spec, available, notes)
    requirements = _requirements(meta, notes)
    install_env: dict[str, str] = {}
    if spec.install is not None:
        install = list(spec.install)
        notes.append(f"install: override {install}")
    elif meta.installable:
        # The backend is preinstalled in the deps layer, so no network is needed here; if the backend
        # wants more for an editable build than its requires list says, fall back to build isolation.
        # --use-pep517: a PEP 660 editable wheel; the legacy `setup.py develop` path is several times slower.
        install = [
            "python -m pip install --no-deps --no-build-isolation --use-pep517 -e . || python -m pip install --no-deps --use-pep517 -e ."
        ]
        if any(b in r for r in meta.build_requires for b in SCM_BACKENDS) and not (root / "PKG-INFO").exists():
            install_env["SETUPTOOLS_SCM_PRETEND_VERSION"] = "0.0.0+forager"
            notes.append("setuptools_scm/hatch-vcs without PKG-INFO: pretend version 0.0.0+forager")
    else:
        install = []
        notes.append("no pyproject.toml/setup.py: the repository is not pip-installed, tests run from /repo")
    test_command, runner = _test_command(root, meta, notes)
    if spec.test_command:
        test_command = spec.test_command
        notes.append(f"test command: override {test_command!r}")
    return Detection(
        python=python,
        requirements=requirements,
        install=install,
        test_command=test_command,
        test_runner=runner,
        system_packages=list(spec.system_packages),
        build_requirements=list(meta.build_requires),
        install_env=install_env,
        notes=notes,
    )


# ---------------------------------------------------------------- manifests


class _Meta:
    """The manifests of a tree, read once."""

    def __init__(self, root: Path):
        self.root = root
        self.pyproject = _toml(root / "pyproject.toml")
        self.setup_cfg = _ini(root / "setup.cfg")
        self.tox = _ini(root / "tox.ini")
        self.setup_py = (root / "setup.py").read_text(errors="replace") if (root / "setup.py").is_file() else ""
        self.pkg_info = (root / "PKG-INFO").read_text(errors="replace") if (root / "PKG-INFO").is_file() else ""
        self.project = self.pyproject.get("project", {}) if isinstance(self.pyproject.get("project"), dict) else {}
        self.name = canonicalize_name(
            self.project.get("name") or self.setup_cfg.get("metadata", {}).get("name", "") or _setup_kw_str(self.setup_py, "name") or ""
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


def _toml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(errors="replace"))
    except tomllib.TOMLDecodeError:
        return {}


def _ini(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(path.read_text(errors="replace"))
    except configparser.Error:
        return {}
    return {s: dict(parser.items(s)) for s in parser.sections()}


def _lines(value: str) -> list[str]:
    return [ln.strip() for ln in value.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _setup_kwargs(source: str) -> dict[str, object]:
    """Literal keyword arguments of the setup() call in setup.py (non-literal ones are skipped)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup":
            out = {}
            for kw in node.keywords:
                try:
                    out[kw.arg] = ast.literal_eval(kw.value)
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    pass
            return out
    return {}


def _setup_kw_str(source: str, key: str) -> str | None:
    value = _setup_kwargs(source).get(key)
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------- python version


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def choose_python(meta: _Meta, spec: RepoSpec, available: list[str], notes: list[str]) -> str:
    if not available:
        raise DetectError("no base image is available locally (forager/base:pyX.Y): run `forager setup`")
    if spec.python:
        if spec.python not in available:
            raise DetectError(f"python {spec.python} was asked for but only {', '.join(available)} exist locally")
        notes.append(f"python: override {spec.python}")
        return spec.python

    requires = (
        meta.project.get("requires-python")
        or meta.setup_cfg.get("options", {}).get("python_requires")
        or _setup_kw_str(meta.setup_py, "python_requires")
        or _pkg_info_field(meta.pkg_info, "Requires-Python")
    )
    classifiers = _classifier_versions(meta)
    mentioned = _tox_ci_versions(meta.root)
    compatible = []
    for version in sorted(available, key=_version_key, reverse=True):
        why = _incompatible(version, requires, classifiers)
        if why:
            notes.append(f"python {version}: {why}")
        else:
            compatible.append(version)
    if not compatible:
        raise DetectError(
            f"no compatible Python among the local base images ({', '.join(available)}): "
            + "; ".join(n for n in notes if n.startswith("python "))
        )
    # Prefer a version the project names (classifiers, tox, CI), else the newest compatible one.
    preferred = [v for v in compatible if v in classifiers or v in mentioned] or compatible
    chosen = preferred[0]
    notes.append(
        f"python: {chosen} (requires-python={requires or 'unspecified'}, classifiers={sorted(classifiers, key=_version_key) or '-'}, "
        f"tox/CI={sorted(mentioned, key=_version_key) or '-'})"
    )
    return chosen


def _incompatible(version: str, requires: str | None, classifiers: set[str]) -> str | None:
    if requires:
        try:
            spec = SpecifierSet(requires.strip().strip("\"'"))
        except InvalidSpecifier:
            spec = None
        # Compatible when some patch release of X.Y satisfies it (`>3.11` still admits 3.11.5).
        if spec is not None and not any(spec.contains(f"{version}.{p}", prereleases=True) for p in (0, 99)):
            return f"excluded by requires-python {requires!r}"
    if classifiers and all(_version_key(c)[0] == 2 for c in classifiers if c):
        return "classifiers list only Python 2"
    if "2-only" in classifiers:
        return "classified Python 2 :: Only"
    return None


def _pkg_info_field(text: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else None


def _classifier_versions(meta: _Meta) -> set[str]:
    texts = [
        "\n".join(meta.project.get("classifiers", []) or []),
        meta.setup_cfg.get("metadata", {}).get("classifiers", ""),
        meta.setup_py,
        meta.pkg_info,
    ]
    found: set[str] = set()
    for text in texts:
        found.update(re.findall(r"Programming Language :: Python :: (\d\.\d+)", text))
        found.update(re.findall(r"Programming Language :: Python :: (\d)(?![\d.])", text))
        if re.search(r"Programming Language :: Python :: 2 :: Only", text):
            found.add("2-only")
    return found


def _tox_ci_versions(root: Path) -> set[str]:
    texts = []
    if (root / "tox.ini").is_file():
        texts.append((root / "tox.ini").read_text(errors="replace"))
    for wf in list((root / ".github" / "workflows").glob("*.y*ml"))[:20]:
        texts.append(wf.read_text(errors="replace"))
    found: set[str] = set()
    for text in texts:
        for m in re.finditer(r"\bpy(\d)(\d{1,2})\b", text):
            found.add(f"{m[1]}.{m[2]}")
        for group in re.findall(r"py3\{([\d, ]+)\}|py\{([\d, ]+)\}", text):
            for part in ",".join(group).split(","):
                part = part.strip()
                if part.isdigit():
                    found.add(f"3.{part[1:]}" if len(part) >= 2 and part[0] == "3" else f"3.{part}")
        for m in re.finditer(r"['\"]?(3\.\d{1,2})['\"]?", " ".join(re.findall(r"python-version[^\n]*|python:[^\n]*", text))):
            found.add(m[1])
    return found


# ---------------------------------------------------------------- dependencies


def _requirements(meta: _Meta, notes: list[str]) -> list[str]:
    runtime: list[str] = []
    runtime += meta.project.get("dependencies", []) or []
    runtime += _lines(meta.setup_cfg.get("options", {}).get("install_requires", ""))
    setup_kw = _setup_kwargs(meta.setup_py)
    runtime += _as_list(setup_kw.get("install_requires"))

    extras: dict[str, list[str]] = {}
    for name, reqs in (meta.project.get("optional-dependencies", {}) or {}).items():
        extras.setdefault(canonicalize_name(name), []).extend(reqs)
    for name, value in meta.setup_cfg.get("options.extras_require", {}).items():
        extras.setdefault(canonicalize_name(name), []).extend(_lines(value))
    for name, reqs in (setup_kw.get("extras_require") or {}).items() if isinstance(setup_kw.get("extras_require"), dict) else []:
        extras.setdefault(canonicalize_name(name.split(":")[0]), []).extend(_as_list(reqs))

    tox_env = meta.tox.get("testenv", {})
    wanted = {canonicalize_name(e) for e in re.split(r"[\s,]+", tox_env.get("extras", "")) if e}
    wanted |= {canonicalize_name(n) for n in TEST_GROUPS if canonicalize_name(n) in extras}
    if not wanted:
        wanted = {canonicalize_name(n) for n in DEV_GROUPS if canonicalize_name(n) in extras}
    chosen_extras = sorted(wanted & set(extras))

    test: list[str] = []
    for extra in chosen_extras:
        test += extras[extra]
    test += _as_list(setup_kw.get("tests_require"))
    test += _dependency_groups(meta.pyproject.get("dependency-groups", {}) or {}, notes)
    files = _requirement_files(meta.root)
    for f in files:
        test += _read_requirements(f, meta.root, set())
    tox_deps = _tox_deps(meta)
    test += tox_deps

    plugins = _pytest_plugins(meta, runtime + test)
    if plugins:
        notes.append(f"pytest config needs plugins the manifests do not list: {plugins}")
    lines = _expand_self(meta, runtime + test + plugins, extras)
    out, seen = [], set()
    for line in list(meta.build_requires) + lines + ["pytest"]:
        key = line.replace(" ", "")
        if key not in seen:
            seen.add(key)
            out.append(line)
    notes.append(
        f"deps: {len(runtime)} runtime, extras {chosen_extras or '-'}, requirement files "
        f"{[str(f.relative_to(meta.root)) for f in files] or '-'}, tox deps {len(tox_deps)}, build {meta.build_requires}"
    )
    return out


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return _lines(value)
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def _dependency_groups(groups: dict, notes: list[str]) -> list[str]:
    names = [n for n in groups if canonicalize_name(n) in TEST_GROUPS] or [n for n in groups if canonicalize_name(n) in DEV_GROUPS]

    def expand(name: str, depth: int = 0) -> list[str]:
        out = []
        for item in groups.get(name, []) if depth < 10 else []:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and "include-group" in item:
                out += expand(item["include-group"], depth + 1)
        return out

    if names:
        notes.append(f"dependency groups: {names}")
    return [r for n in names for r in expand(n)]


_REQ_FILE = re.compile(r"(^|[-_/])(test|tests|testing|dev|develop)([-_.]|$)")


def _requirement_files(root: Path) -> list[Path]:
    """requirements.txt plus the test (else dev) requirement files, pinned .txt preferred over .in."""
    candidates = sorted(set(root.glob("*requirements*.txt")) | set(root.glob("requirements/*.txt")) | set(root.glob("requirements/*.in")))
    txt_stems = {p.with_suffix("").as_posix() for p in candidates if p.suffix == ".txt"}
    candidates = [p for p in candidates if p.suffix == ".txt" or p.with_suffix("").as_posix() not in txt_stems]
    rel = {p: p.relative_to(root).as_posix().lower() for p in candidates}
    base = [p for p in candidates if rel[p] in ("requirements.txt", "requirements/base.txt", "requirements/main.txt")]
    testy = [p for p in candidates if re.search(r"test", rel[p]) and not re.search(r"doc|lint|typ|mypy", rel[p])]
    if not testy:
        testy = [p for p in candidates if re.search(r"dev", rel[p]) and not re.search(r"doc|lint|typ|mypy", rel[p])]
    return base + [p for p in testy if p not in base]


def _read_requirements(path: Path, root: Path, seen: set[Path]) -> list[str]:
    """Requirement lines of a file, `-r`/`-c` includes inlined; local paths and editables dropped."""
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
            out += _read_requirements((path.parent / m[2]).resolve(), root, seen)
            continue
        if line.startswith(("-", ".")) or "/" in line.split(";")[0] and "://" not in line:
            continue  # -e ., --hash options, local paths: not installable without the code
        out.append(line)
    return out


def _tox_deps(meta: _Meta) -> list[str]:
    deps = meta.tox.get("testenv", {}).get("deps", "")
    out = []
    for line in _lines(deps):
        line = line.replace("{toxinidir}/", "").replace("{toxinidir}", ".")
        if "{" in line:
            continue  # factor-conditional or substituted lines: too dynamic to read statically
        m = re.match(r"^(-r|-c)\s*(\S+)", line)
        if m:
            out += _read_requirements((meta.root / m[2]).resolve(), meta.root, set())
        elif not line.startswith(("-", ".")):
            out.append(line)
    return out


def _expand_self(meta: _Meta, lines: list[str], extras: dict[str, list[str]]) -> list[str]:
    """Replace `project[extra]` self-references with those extras' requirements; drop unparsable lines."""
    out: list[str] = []
    queue, done = list(lines), set()
    while queue:
        line = queue.pop(0)
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if meta.name and canonicalize_name(req.name) == meta.name:
            for extra in req.extras:
                if extra not in done:
                    done.add(extra)
                    queue += extras.get(canonicalize_name(extra), [])
            continue
        out.append(line)
    return out


# ---------------------------------------------------------------- tests


# Options in a project's pytest `addopts` that only a plugin understands: without the plugin pytest
# refuses to start (exit code 4), so the plugin joins the dependency layer.
_ADDOPTS_PLUGINS = {
    r"--cov\b": "pytest-cov",
    r"(^|\s)-n\s*\S|--numprocesses|--dist\b": "pytest-xdist",
    r"--benchmark-": "pytest-benchmark",
    r"--timeout\b": "pytest-timeout",
    r"--reruns\b": "pytest-rerunfailures",
    r"--doctest-plus\b": "pytest-doctestplus",
    r"-p\s*randomly|--randomly": "pytest-randomly",
    r"--mypy\b": "pytest-mypy",
}


def _pytest_ini(meta: _Meta) -> dict:
    """The project's pytest settings, from whichever file holds them (pytest's own precedence)."""
    pytest_ini = _ini(meta.root / "pytest.ini").get("pytest")
    if pytest_ini is not None:
        return pytest_ini
    tool = meta.pyproject.get("tool", {}).get("pytest", {}).get("ini_options")
    if tool is not None:
        return tool
    return meta.tox.get("pytest") or meta.setup_cfg.get("tool:pytest") or {}


def _pytest_plugins(meta: _Meta, requirements: list[str]) -> list[str]:
    ini = _pytest_ini(meta)
    addopts = ini.get("addopts", "")
    addopts = " ".join(addopts) if isinstance(addopts, list) else str(addopts)
    required = ini.get("required_plugins", [])
    required = required if isinstance(required, list) else str(required).split()
    have = set()
    for line in requirements:
        try:
            have.add(canonicalize_name(Requirement(line).name))
        except InvalidRequirement:
            pass
    wanted = [plugin for pattern, plugin in _ADDOPTS_PLUGINS.items() if re.search(pattern, addopts)] + list(required)
    out = []
    for plugin in wanted:
        try:
            name = canonicalize_name(Requirement(plugin).name)
        except InvalidRequirement:
            continue
        if name not in have:
            have.add(name)
            out.append(plugin)
    return out


def _test_command(root: Path, meta: _Meta, notes: list[str]) -> tuple[str, str]:
    test_files = _test_files(root)
    runner = "pytest"
    if test_files and _is_unittest_suite(test_files):
        runner = "unittest"
        notes.append("tests are unittest.TestCase suites: run through pytest, which collects them")
    configured = (
        "testpaths" in meta.pyproject.get("tool", {}).get("pytest", {}).get("ini_options", {})
        or "testpaths" in _ini(root / "pytest.ini").get("pytest", {})
        or "testpaths" in meta.setup_cfg.get("tool:pytest", {})
        or "testpaths" in meta.tox.get("pytest", {})
    )
    # One test module that cannot be imported (an undeclared test dependency) must not hide the
    # thousands of tests beside it: it is reported as an `error` case and the rest still run.
    base = "python -m pytest --continue-on-collection-errors"
    if configured:
        command = base
        notes.append("tests: pytest testpaths from the project's config")
    else:
        dirs = [d for d in ("tests", "test", "testing") if (root / d).is_dir()]
        top = sorted(p.name for p in root.glob("test*.py") if p.is_file()) + sorted(p.name for p in root.glob("*_test.py"))
        targets = dirs + top
        command = base + "".join(f" {t}" for t in targets)
        notes.append(f"tests: {targets or 'pytest default discovery'} ({len(test_files)} test files)")
    return command, runner


def _test_files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(p in SKIP_DIRS for p in rel[:-1]):
            continue
        if path.name.startswith("test") or path.name.endswith("_test.py"):
            out.append(path)
    return out


def _is_unittest_suite(files: list[Path]) -> bool:
    uses_unittest = uses_pytest = False
    for path in files[:200]:
        text = path.read_text(errors="replace")
        uses_unittest |= bool(re.search(r"unittest\.TestCase|\(TestCase\)", text))
        uses_pytest |= bool(re.search(r"^\s*import pytest|^\s*from pytest|^def test_\w+\(\w", text, re.M))
    return uses_unittest and not uses_pytest
