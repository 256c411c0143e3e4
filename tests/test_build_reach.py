"""The builder's reach, end to end with real Docker: a C extension (the compiler comes on demand), a commit
built with the dependencies of its date on the older Python it supports, a suite with a test that hangs,
the failure classes named in the catalog, and builds that cannot reach the host's services."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from envserver.sandbox import DockerSandbox
from forager.cli import machine
from forager.config import Settings
from images import base
from images.build import BuildOptions, build_list, build_repo
from images.catalog import load_records
from images.sources import parse_entry
from tests.fixtures_images import git_commit_all

pytestmark = pytest.mark.slow

PYPROJECT = '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'


def write_repo(path: Path, files: dict[str, str], date: str | None = None) -> tuple[Path, str]:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    if not (path / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    if date is None:
        return path, git_commit_all(path, "commit")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    subprocess.run(["git", "add", "-A"], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", f"commit of {date}"], cwd=path, check=True, env=env)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True).stdout.strip()
    return path, sha


def run_in(image: str, command: str) -> str:
    with DockerSandbox.start(image, kind="test") as box:
        return box.run(command, 120).text


def options(**kw) -> BuildOptions:
    # Tests may have to make a base image (debootstrap): let the builder install it on the host if missing.
    return BuildOptions(install_host_packages=lambda packages: machine.apt_install(packages, print), **kw)


C_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *add(PyObject *self, PyObject *args) {
    long a, b;
    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
    return PyLong_FromLong(a + b);
}

static PyMethodDef methods[] = {{"add", add, METH_VARARGS, "add two integers"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, methods};
PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module); }
"""


def test_a_c_extension_gets_a_compiler_and_builds_ok(base_image, images_home, tmp_path, docker_client):
    repo, _ = write_repo(tmp_path / "cext", {
        "pyproject.toml": PYPROJECT,
        "setup.py": "from setuptools import Extension, setup\n"
                    "setup(name='cext', version='1', packages=['cext'], ext_modules=[Extension('cext._fast', ['cext/_fast.c'])])\n",
        "cext/__init__.py": "from cext._fast import add\n",
        "cext/_fast.c": C_SOURCE,
        "tests/test_fast.py": "from cext import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
                              "def test_add_negative():\n    assert add(-2, 1) == -1\n",
    })
    record = build_repo(parse_entry(str(repo)), Settings(home=images_home), options())
    assert record.status == "ok", f"{record.status}: {record.reason} ({record.log_path})"
    assert (record.tests_passed, record.tests_failed) == (2, 0)
    log = Path(record.log_path).read_text()
    assert "toolchain: setup.py/setup.cfg declares extension modules" in log  # (the layer may be reused from a run before)
    out = run_in(record.tag, "gcc --version | head -1; ls /repo/cext/ | grep -c '_fast.*\\.so'")
    assert "gcc" in out and out.split()[-1] == "1"  # the compiler is in the image, the extension was built in place


def test_an_old_commit_builds_with_the_dependencies_of_its_date_on_the_python_it_supports(base_image, images_home, tmp_path,
                                                                                         docker_client):
    # June 2021: Jinja2 2.11.3 imports `soft_unicode`, which MarkupSafe removed in 2.1 (2022): with today's
    # MarkupSafe the pinned Jinja2 cannot even be imported; as of the commit's date it works.
    files = {
        "setup.py": "from setuptools import setup\n"
                    "setup(name='dated', version='1', packages=['dated'], python_requires='>=3.6, <3.10')\n",
        "requirements-test.txt": "jinja2==2.11.3\n",
        "dated/__init__.py": "import jinja2\n\n\ndef render(value):\n    return jinja2.Template('<{{ v }}>').render(v=value)\n",
        "tests/test_render.py": "from dated import render\n\n\ndef test_render():\n    assert render(1) == '<1>'\n\n\n"
                                "def test_render_text():\n    assert render('a') == '<a>'\n",
    }
    repo, old = write_repo(tmp_path / "dated", files, date="2021-06-10T12:00:00+0000")
    write_repo(repo, {"requirements-test.txt": "jinja2>=3.1\n",
                      "setup.py": files["setup.py"].replace(", <3.10", "")}, date="2025-01-15T00:00:00+0000")
    settings = Settings(home=images_home)
    at_date = build_list([parse_entry(f"{repo}@{old}")], settings, options=options())[0]  # a repo@commit entry
    assert at_date.status == "ok", f"{at_date.status}: {at_date.reason} ({at_date.log_path})"
    assert at_date.commit == old and at_date.python == "3.9" and at_date.commit_date is not None
    freeze = {line.split("==")[0].lower(): line.split("==")[-1] for line in at_date.pip_freeze if "==" in line}
    assert freeze["jinja2"] == "2.11.3" and freeze["markupsafe"].startswith("2.0")
    log = Path(at_date.log_path).read_text()
    assert "excluded by requires-python" in log
    assert docker_client.images.get(at_date.deps_tag).labels["forager.deps.date"] == "2021-07-01T00:00:00Z"
    today = build_repo(parse_entry(f"{repo}@{old}"), settings, options(resolve_at="today"))
    # The same commit with today's index: Jinja2 2.11.3 cannot import, so no test module loads.
    assert today.status == "collect" and today.python == "3.9", f"{today.status}: {today.reason}"


HANGING_TESTS = """\
import socket


def test_quick():
    assert sum([1, 2]) == 3


def test_also_quick():
    assert "a" * 2 == "aa"


def test_waits_for_a_live_server_forever():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.accept()  # nobody ever connects
"""


def test_a_hanging_test_costs_seconds_and_is_recorded(base_image, images_home, tmp_path):
    repo, _ = write_repo(tmp_path / "hangs", {"pyproject.toml": PYPROJECT + '[project]\nname = "hangs"\nversion = "1"\n',
                                              "hangs/__init__.py": "", "tests/test_h.py": HANGING_TESTS})
    record = build_repo(parse_entry(str(repo)), Settings(home=images_home), options(per_test_timeout=5, test_timeout=300))
    hung = "tests/test_h.py::test_waits_for_a_live_server_forever"
    assert record.status == "ok", f"{record.status}: {record.reason}"
    assert record.per_test_timeout == 5 and record.timed_out_tests == [hung]
    # Neither passed nor failed in the counts, and never a passing test (so never pass-to-pass); the run was
    # not ended by the whole-run backstop (that would be status `timeout`).
    assert record.test_outcomes[hung] == "failed" and (record.tests_passed, record.tests_failed) == (2, 0)


def test_new_failure_classes_are_named_in_the_catalog_with_their_logs(base_image, tmp_path, forager_home, monkeypatch):
    pyproject = PYPROJECT + '[project]\nname = "{name}"\nversion = "1"\n'
    lib, _ = write_repo(tmp_path / "needslib", {"pyproject.toml": pyproject.format(name="needslib"), "needslib/__init__.py": ""})
    unresolvable, _ = write_repo(tmp_path / "unresolvable", {
        "pyproject.toml": pyproject.format(name="unresolvable"), "unresolvable/__init__.py": "",
        "requirements-test.txt": "pytest==0.0.999\n"})
    rust, _ = write_repo(tmp_path / "rusty", {
        "pyproject.toml": '[build-system]\nrequires = ["maturin>=1"]\nbuild-backend = "maturin"\n[project]\nname = "rusty"\nversion = "1"\n',
        "Cargo.toml": '[package]\nname = "rusty"\nversion = "0.1.0"\nrust-version = "1.99"\n'})
    future, _ = write_repo(tmp_path / "future", {
        "pyproject.toml": pyproject.format(name="future") + 'requires-python = "==3.12.*"\n', "future/__init__.py": ""})
    # Python 3.12 as if a Debian release shipped it: making its base fails (no such release), so 3.12 is unavailable.
    monkeypatch.setitem(base.RELEASES, "3.12", "forager-no-such-release")
    specs = [parse_entry(str(lib), system_packages=["libforager-no-such-library-dev"]), parse_entry(str(unresolvable)),
             parse_entry(str(rust)), parse_entry(str(future))]
    settings = Settings.from_env()
    records = build_list(specs, settings, jobs=2, options=options())
    assert [r.status for r in records] == ["system_library", "resolution", "toolchain", "python_unavailable"], \
        [(r.status, r.reason) for r in records]
    assert "libforager-no-such-library-dev" in records[0].reason
    assert "pytest==0.0.999" in Path(records[1].log_path).read_text() and "as of" in records[1].reason
    assert "rustc" in records[2].reason and "1.99" in records[2].reason
    assert "3.12" in records[3].reason and "forager-no-such-release" in Path(records[3].log_path).read_text()
    shown = subprocess.run([sys.executable, "-m", "forager.cli", "images"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "300"})
    assert shown.returncode == 0, shown.stderr
    for record in records:
        assert record.status in shown.stderr + shown.stdout
    assert {r.status for r in load_records(settings.catalog_path)} >= {"system_library", "resolution", "toolchain", "python_unavailable"}


PROBE_SETUP = """\
import socket

from setuptools import setup

# Try the host's services on loopback from inside the build, as a hostile setup.py would.
results = []
for port in {ports}:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"PING\\r\\n")
            results.append(f"{{port}} reply: " + conn.recv(64).decode(errors="replace"))
    except OSError as exc:
        results.append(f"{{port}} {{type(exc).__name__}}: {{exc}}")
print("FORAGER-PROBE", results)
with open("/tmp/forager-probe.txt", "w") as out:
    out.write("\\n".join(results))
setup(name="probe", version="1", packages=["probe"])
"""


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_build_cannot_reach_redis_or_an_http_server_on_the_hosts_loopback(base_image, images_home, tmp_path,
                                                                            redis_url):
    """Redis and an HTTP server (as the env server is) listen on the host's loopback: a build reaches neither."""
    redis_port = urlparse(redis_url).port
    with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as conn:  # the server is there for the host
        conn.sendall(b"PING\r\n")
        assert conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # it answers (with a password, NOAUTH)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        ports = [redis_port, http.server_address[1]]
        repo, _ = write_repo(tmp_path / "probe", {"pyproject.toml": PYPROJECT, "setup.py": PROBE_SETUP.format(ports=ports),
                                                  "probe/__init__.py": "", "tests/test_p.py": "def test_p():\n    pass\n"})
        record = build_repo(parse_entry(str(repo)), Settings(home=images_home), options())
    finally:
        http.shutdown()
    assert record.status == "ok", f"{record.status}: {record.reason}"
    seen = run_in(record.tag, "cat /tmp/forager-probe.txt").splitlines()
    assert len(seen) == 2 and all("ConnectionRefusedError" in line for line in seen), seen


def test_the_base_image_pip_conf_holds_no_credentials(base_image):
    conf = run_in(base_image, "cat /etc/pip.conf")
    assert conf.startswith("[global]") and not re.search(r"://[^/\s]*@", conf)
