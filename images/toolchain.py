"""Compiled code and system libraries, detected from the project's own files (no model, nothing run).

- `needs_compiler`: setuptools `Extension`/`ext_modules`, cffi modules, Cython `.pyx`, C/C++ sources next
  to a build config, or a compiling build backend (scikit-build-core, meson-python, pybind11, cmake, ...).
- `needs_rust`: maturin, setuptools-rust or a Cargo.toml. Debian's own cargo is installed where the
  release's rustc is at least the crate's `rust-version` (bullseye 1.48, bookworm 1.63, trixie 1.85);
  where none is, the build fails as `toolchain` saying so (rustup's binaries cannot be fetched here).
- `libraries`: apt packages the project's CI, Dockerfiles, tox or nox install (`lib*-dev` and a few build
  tools), plus well-known dependency -> library pairs (lxml -> libxml2/libxslt, Pillow -> libjpeg/zlib,
  psycopg -> libpq, PyYAML -> libyaml, ...). They are installed with the toolchain; packages this Debian
  release does not have (Ubuntu names in CI) are skipped by the layer, not fatal.

The toolchain itself (TOOLCHAIN_PACKAGES) is gcc/g++/make, pkg-config and the chosen Python's headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from images.base import DEBIAN_RUSTC, python_release
from images.manifests import Manifests, read_toml

TOOLCHAIN_PACKAGES = ["gcc", "g++", "make", "libc6-dev", "pkg-config"]  # + python3-dev where the venv is Debian's python3
RUST_PACKAGES = ["cargo"]
DEFAULT_RUST_VERSION = "1.63"  # PyO3 0.22's minimum, when the crate does not say

_COMPILING_BACKENDS = ("scikit-build", "scikit_build", "mesonpy", "meson-python", "meson_python", "pybind11", "cmake",
                       "cython", "cffi", "cppy", "numpy", "setuptools-rust", "setuptools_rust", "maturin", "extension-helpers")
_RUST_BACKENDS = ("maturin", "setuptools-rust", "setuptools_rust")
_SKIP = {".git", ".tox", ".venv", "venv", "node_modules", "docs", "doc", "build", "dist", "examples", "benchmarks", "tests", "test", "testing"}
_BUILD_TOOLS = {"pkg-config", "pkgconf", "cmake", "ninja-build", "swig", "gfortran", "nasm", "yasm", "meson", "gettext",
                "autoconf", "automake", "libtool", "patchelf"}

# Well-known Python distribution -> Debian packages its build (from source) or import needs.
LIBRARY_PAIRS = {
    "lxml": ["libxml2-dev", "libxslt1-dev"],
    "pillow": ["libjpeg-dev", "zlib1g-dev", "libfreetype6-dev", "libtiff-dev", "libwebp-dev", "liblcms2-dev", "libopenjp2-7-dev"],
    "psycopg2": ["libpq-dev"], "psycopg": ["libpq-dev"], "psycopg-c": ["libpq-dev"],
    "pyyaml": ["libyaml-dev"],
    "cffi": ["libffi-dev"],
    "cryptography": ["libssl-dev", "libffi-dev"],
    "pyopenssl": ["libssl-dev"],
    "mysqlclient": ["default-libmysqlclient-dev"],
    "python-ldap": ["libldap2-dev", "libsasl2-dev"],
    "pycairo": ["libcairo2-dev"], "cairocffi": ["libcairo2"],
    "pygobject": ["libgirepository1.0-dev", "libcairo2-dev"],
    "h5py": ["libhdf5-dev"], "netcdf4": ["libnetcdf-dev"],
    "pyzmq": ["libzmq3-dev"],
    "pycurl": ["libcurl4-openssl-dev", "libssl-dev"],
    "python-snappy": ["libsnappy-dev"],
    "shapely": ["libgeos-dev"], "gdal": ["libgdal-dev"],
    "xmlsec": ["libxmlsec1-dev"], "pyaudio": ["portaudio19-dev"],
    "dbus-python": ["libdbus-1-dev", "libglib2.0-dev"], "systemd-python": ["libsystemd-dev"],
    "python-magic": ["libmagic1"], "pykerberos": ["libkrb5-dev"], "gssapi": ["libkrb5-dev"],
    "pyodbc": ["unixodbc-dev"], "pynacl": ["libsodium-dev"], "argon2-cffi-bindings": ["libffi-dev"],
    "pygraphviz": ["libgraphviz-dev"], "pyxattr": ["libattr1-dev"], "python-lzo": ["liblzo2-dev"],
}
# A missing header named in a failed build -> the Debian package that has it (one retry adds it).
HEADER_PACKAGES = {
    "jpeglib.h": "libjpeg-dev", "zlib.h": "zlib1g-dev", "ffi.h": "libffi-dev", "libpq-fe.h": "libpq-dev",
    "pg_config.h": "libpq-dev", "yaml.h": "libyaml-dev", "libxml/xmlversion.h": "libxml2-dev",
    "libxslt/xsltconfig.h": "libxslt1-dev", "openssl/opensslv.h": "libssl-dev", "openssl/ssl.h": "libssl-dev",
    "bzlib.h": "libbz2-dev", "lzma.h": "liblzma-dev", "sqlite3.h": "libsqlite3-dev", "ft2build.h": "libfreetype6-dev",
    "tiffio.h": "libtiff-dev", "png.h": "libpng-dev", "cairo.h": "libcairo2-dev", "curl/curl.h": "libcurl4-openssl-dev",
    "sodium.h": "libsodium-dev", "zmq.h": "libzmq3-dev", "snappy-c.h": "libsnappy-dev", "krb5.h": "libkrb5-dev",
    "sql.h": "unixodbc-dev", "gmp.h": "libgmp-dev", "mpfr.h": "libmpfr-dev", "hdf5.h": "libhdf5-dev",
    "lber.h": "libldap2-dev", "ldap.h": "libldap2-dev", "sasl/sasl.h": "libsasl2-dev", "readline/readline.h": "libreadline-dev",
    "ncurses.h": "libncurses-dev", "uuid/uuid.h": "uuid-dev", "expat.h": "libexpat1-dev", "lz4.h": "liblz4-dev",
    "zstd.h": "libzstd-dev", "openjpeg.h": "libopenjp2-7-dev", "lcms2.h": "liblcms2-dev", "webp/decode.h": "libwebp-dev",
}


@dataclass
class Toolchain:
    needs_compiler: bool = False
    needs_rust: bool = False
    rust_version: str | None = None  # the crate's minimum rustc, when it says
    libraries: list[str] = field(default_factory=list)  # detected apt packages (skipped when the release lacks them)
    evidence: list[str] = field(default_factory=list)
    ungenerated_pyx: list[str] = field(default_factory=list)  # .pyx whose .c/.cpp the build expects but git lacks


def detect_toolchain(meta: Manifests, requirement_lines: list[str]) -> Toolchain:
    root = meta.root
    tc = Toolchain()
    setup_text = meta.setup_py + "\n" + (root / "setup.cfg").read_text(errors="replace") if (root / "setup.cfg").is_file() else meta.setup_py
    if re.search(r"\bExtension\s*\(|\bext_modules\b|\bcythonize\s*\(|\bcffi_modules\b|\bbuild_ext\b", setup_text):
        tc.needs_compiler = True
        tc.evidence.append("setup.py/setup.cfg declares extension modules")
    if meta.pyproject.get("tool", {}).get("setuptools", {}).get("ext-modules"):
        tc.needs_compiler = True
        tc.evidence.append("pyproject [tool.setuptools] ext-modules")
    backend = " ".join([str(meta.pyproject.get("build-system", {}).get("build-backend", "")), *meta.build_requires]).lower()
    hits = [b for b in _COMPILING_BACKENDS if b in backend]
    if hits:
        tc.needs_compiler = True
        tc.evidence.append(f"build backend/requirements {hits}")
    sources = _sources(root)
    if any(p.suffix in (".pyx", ".pxd") for p in sources):
        tc.needs_compiler = True
        tc.evidence.append("Cython sources (.pyx)")
        # setup.py names the generated C file (`Extension(..., ["pkg/_x.c"])`) that only `cython` writes.
        for pyx in (p for p in sources if p.suffix == ".pyx"):
            rel = pyx.relative_to(root).as_posix()
            c_name = rel[:-4] + ".c"
            if not pyx.with_suffix(".c").exists() and not pyx.with_suffix(".cpp").exists() and c_name in setup_text:
                tc.ungenerated_pyx.append(rel)
    elif sources and (meta.setup_py or meta.pyproject.get("build-system")):
        tc.needs_compiler = True
        tc.evidence.append(f"C/C++ sources next to the build config ({sources[0].relative_to(root)}, ...)")
    cargo = read_toml(root / "Cargo.toml")
    if cargo or any(b in backend for b in _RUST_BACKENDS):
        tc.needs_rust = tc.needs_compiler = True
        version = (cargo.get("package", {}) or {}).get("rust-version") or (cargo.get("workspace", {}).get("package", {}) or {}).get("rust-version")
        tc.rust_version = str(version) if version else None
        tc.evidence.append(f"Rust extension (Cargo.toml / maturin / setuptools-rust), rust-version {tc.rust_version or 'unspecified'}")
    tc.libraries = sorted(set(_ci_packages(root)) | set(_paired_packages([meta.name or "", *requirement_lines])))
    if tc.libraries:
        tc.evidence.append(f"system packages from CI/tox/nox/Dockerfiles and dependency pairs: {tc.libraries}")
    return tc


def rust_ok(python: str, rust_version: str | None) -> str | None:
    """None when Debian's cargo for this Python's release is new enough, else why not."""
    release = python_release(python)
    have = DEBIAN_RUSTC.get(release or "")
    need = rust_version or DEFAULT_RUST_VERSION
    if not have:
        return f"no Debian rustc is known for Python {python}'s base"
    if _version(have) < _version(need):
        return f"Debian {release}'s rustc {have} is older than the {need} the crate needs"
    return None


def rust_version_of(python: str) -> tuple[int, ...]:
    """Debian's rustc version in the release of this Python's base ((): none known)."""
    return _version(DEBIAN_RUSTC.get(python_release(python) or "", ""))


def packages_for_headers(log_text: str) -> list[str]:
    """Debian packages holding headers a failed build could not find."""
    missing = re.findall(r"fatal error: ([\w/.+-]+\.h): No such file or directory", log_text)
    return sorted({HEADER_PACKAGES[h] for h in missing if h in HEADER_PACKAGES})


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _sources(root: Path) -> list[Path]:
    found = []
    for pattern in ("*.pyx", "*.c", "*.cpp", "*.cc", "*.cxx", "*.pxd"):
        for depth in ("", "*/", "*/*/"):
            for path in root.glob(depth + pattern):
                if not (set(path.relative_to(root).parts[:-1]) & _SKIP) and not path.name.startswith("test"):
                    found.append(path)
    return sorted(found)


def _ci_packages(root: Path) -> list[str]:
    files = [*sorted((root / ".github" / "workflows").glob("*.y*ml"))[:20], root / ".travis.yml", root / "tox.ini",
             root / "noxfile.py", *sorted(root.glob("Dockerfile*")), *sorted(root.glob("*/Dockerfile*"))[:5]]
    for folder in (".ci", "ci", "scripts", ".github"):
        files += sorted((root / folder).glob("*.sh"))[:20]
    out: set[str] = set()
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace").replace("\\\n", " ")
        for m in re.finditer(r"apt(?:-get)?\s+(?:-\S+\s+)*install\b([^\n;&|#)\"']*)", text):
            for word in m[1].split():
                if word.startswith("-") or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", word):
                    continue
                if word.endswith("-dev") or word in _BUILD_TOOLS:
                    out.add(word)
    return sorted(out)


def _paired_packages(lines: list[str]) -> list[str]:
    out: set[str] = set()
    for line in lines:
        try:
            name = canonicalize_name(Requirement(line).name)
        except InvalidRequirement:
            name = canonicalize_name(line.strip()) if line.strip() else ""
        out.update(LIBRARY_PAIRS.get(name, []))
    return sorted(out)
