"""Set-up: idempotent, reports each part, and images carry the host's TLS and pip settings."""

from __future__ import annotations

import json
import subprocess
import sys

from envserver.sandbox import DockerSandbox
from forager.cli import machine
from forager.config import base_image_tag
from forager.errors import SetupError
from images import base


def _forager(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forager.cli", *args], capture_output=True, text=True, timeout=600)


def test_check_reports_every_part_as_json():
    proc = _forager("setup", "--check", "--json")
    doc = json.loads(proc.stdout)
    names = {p["name"] for p in doc["parts"]}
    assert {"platform", "docker", "redis", "base_image"} <= names
    assert doc["ok"] is True, doc
    assert proc.returncode == 0


def test_second_setup_changes_nothing():
    _forager("setup", "--json")  # whatever the first run had to do (CI ran it already, via forager.sh)
    proc = _forager("setup", "--json")
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert [p["name"] for p in doc["parts"] if p["changed"]] == []


def test_pip_conf_keeps_network_settings_and_drops_local_paths():
    conf = base.host_pip_conf()
    assert conf.startswith("[global]\n")
    assert "file:" not in conf
    assert "cert = /usr/local/share/ca-certificates/forager-host-ca.crt" in conf


def test_base_image_verifies_tls_with_the_host_bundle(docker_client, base_image):
    assert base_image == base_image_tag()
    with DockerSandbox.start(base_image, kind="test") as box:
        out = box.run("python -c 'import ssl,os; print(os.environ[\"PIP_CERT\"]); "
                      "ssl.create_default_context(cafile=os.environ[\"PIP_CERT\"])'; git --version; which python", 60).text
    assert "/usr/local/share/ca-certificates/forager-host-ca.crt" in out
    assert "git version" in out
    assert "/opt/venv/bin/python" in out


def test_install_refusal_says_what_to_do(monkeypatch):
    monkeypatch.setattr(machine, "_can_install", lambda: "not running as root")
    try:
        machine.apt_install(["redis-server"], log=lambda m: None)
    except SetupError as exc:
        assert "apt-get install redis-server" in str(exc)
    else:
        raise AssertionError("apt_install must refuse when it cannot install")
