"""Name a failed layer build's failure class from its log, so `forager images` says why, not only that.

    toolchain        a compiler, Python's headers or a Rust toolchain was missing or unusable
    system_library   a C library (its headers, pkg-config file or .so) was missing, or apt could not install it
    resolution       the requirements do not resolve (as of the commit's date, when one was applied)
    error            Docker itself failed (no network endpoint for the build container, ...)
    install          anything else that failed while installing

`missing_compiler(text)` tells the builder a retry with the toolchain may help.
"""

from __future__ import annotations

import re

_COMPILER_MISSING = [
    r"gcc: (error: )?No such file or directory",
    r"gcc(-\d+)?: not found",
    r"\bcc: not found",
    r"unable to execute '[\w./-]*(gcc|cc|g\+\+|clang)'",
    r"command '[\w./-]*(gcc|cc|g\+\+|c\+\+)' failed: No such file or directory",
    r"error: command '[\w./-]*(gcc|cc|g\+\+)' failed with exit (code|status) 1.*\n?.*Python\.h",
    r"fatal error: Python\.h: No such file or directory",
    r"Unknown compiler\(s\)",
    r"No CMAKE_C(XX)?_COMPILER could be found",
    r"Could not find compiler set in environment variable CC",
    r"You need a C compiler",
    r"error: Microsoft Visual C\+\+",
    r"make: not found|CMake must be installed|cmake: not found",
]
_RUST = [
    r"can't find Rust compiler",
    r"cargo: not found|cargo: command not found|Cargo, the Rust package manager, is not installed",
    r"rustc \d[\d.]* is not supported",
    r"requires rustc \d",
    r"package `[^`]+` cannot be built because it requires rustc",
    r"failed to (get|download|load source for) .* (dependency|crates)|Unable to update registry `crates-io`",
]
_LIBRARY = [
    r"fatal error: (?!Python\.h)[\w/.+-]+\.h: No such file or directory",
    r"Package '?[\w.+-]+'?,? was not found in the pkg-config search path",
    r"No package '[\w.+-]+' found",
    r"/usr/bin/ld: cannot find -l\w+",
    r"pg_config executable not found|Error: pg_config",
    r"xml2-config|xslt-config: not found|Please make sure the libxml2 and libxslt development packages are installed",
    r"The headers or library files could not be found for \w+",
    r"E: Unable to locate package|E: Package '[^']+' has no installation candidate",
    r"Dependency \"[\w.+-]+\" not found",  # meson
    r"Could NOT find \w+ \(missing:",  # cmake
]
_RESOLUTION = [
    r"No solution found when resolving",
    r"we can conclude that .* (are|is) unsatisfiable",
    r"ResolutionImpossible",
    r"Could not find a version that satisfies the requirement",
    r"No matching distribution found",
    r"Because there (is|are) no versions? of",
    r"requirements are unsatisfiable",
]


def _any(patterns: list[str], text: str) -> re.Match | None:
    for pattern in patterns:
        m = re.search(pattern, text)
        if m:
            return m
    return None


_DOCKER = [
    r"failed to create endpoint .* on network",
    r"could not find bridge",
    r"OCI runtime create failed",
    r"No such image: sha256:|failed to get destination image",  # another builder's prune took an image mid-build
]
_NETWORK = [
    r"Temporary failure in name resolution",
    r"Max retries exceeded with url",
    r"dns error|failed to lookup address information",
    r"Connection reset by peer|Connection timed out|Read timed out",
    r"Failed to fetch http",  # apt
]


def network_error(text: str) -> bool:
    """A failure that a flaky network or a busy Docker daemon explains (worth one more try)."""
    return _any(_NETWORK, text) is not None or _any(_DOCKER, text) is not None


def missing_compiler(text: str) -> bool:
    return _any(_COMPILER_MISSING, text) is not None


def classify(text: str) -> tuple[str, str]:
    """(failure class, the log line that decided it) for a failed layer build's log."""
    for status, patterns in (("error", _DOCKER), ("resolution", _RESOLUTION), ("toolchain", _RUST), ("system_library", _LIBRARY),
                             ("toolchain", _COMPILER_MISSING)):
        m = _any(patterns, text)
        if m:
            line_start = text.rfind("\n", 0, m.start()) + 1
            line_end = text.find("\n", m.end())
            return status, text[line_start: line_end if line_end >= 0 else None].strip()[:300]
    return "install", ""
