"""Which images the server may start: tags, globs, and the builder's catalog (no Docker needed)."""

from __future__ import annotations

import json

from envserver.allowlist import AllowList
from envserver.config import ServerConfig, is_loopback


def test_tags_globs_and_catalog_records(tmp_path):
    catalog = tmp_path / "catalog.jsonl"
    records = [
        {"repo": "six", "commit": "a1", "status": "ok", "tag": "repo/six:a1"},
        {"repo": "attrs", "commit": "b2", "status": "ok", "tag": "repo/attrs:b2"},
        {"repo": "attrs", "commit": "b2", "status": "install", "tag": "repo/attrs:b2"},  # the last record wins
        {"repo": "flaky", "commit": "c3", "status": "low_pass_rate", "tag": "repo/flaky:c3"},
    ]
    catalog.write_text("\n".join(json.dumps(r) for r in records) + '\n{"torn": ')
    allow = AllowList(["forager/*", "exact/image:1"], catalog)
    assert allow.allows("forager/base:py3.11") and allow.allows("exact/image:1")
    assert allow.allows("repo/six:a1")
    assert not allow.allows("repo/attrs:b2") and not allow.allows("repo/flaky:c3")
    assert not allow.allows("exact/image:2") and not allow.allows("ubuntu:latest")
    # the builder appends while the server runs: new 'ok' records are picked up
    with catalog.open("a") as f:
        f.write("\n" + json.dumps({"repo": "new", "commit": "d4", "status": "ok", "tag": "repo/new:d4"}) + "\n")
    assert allow.allows("repo/new:d4")


def test_missing_catalog_allows_only_patterns(tmp_path):
    allow = AllowList(["forager/*"], tmp_path / "nope.jsonl")
    assert allow.allows("forager/x:1") and not allow.allows("other/x:1")


def test_every_bind_needs_a_token():
    import pytest

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    ServerConfig(host="127.0.0.1", token="t").check()
    ServerConfig(host="0.0.0.0", token="t" * 16).check()
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(ValueError, match="a token is required"):
            ServerConfig(host=host).check()
    with pytest.raises(ValueError, match="under 16 characters"):
        ServerConfig(host="0.0.0.0", token="short").check()
