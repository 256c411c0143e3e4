"""The catalog file: appended records, the last per repo@commit wins, a damaged line loses nothing else."""

from __future__ import annotations

from forager.models import ImageRecord
from images.catalog import append_record, find_ok, load_catalog, load_records, ok_records


def record(**kw) -> ImageRecord:
    base = dict(repo="demo", source="pypi:demo==1", commit="c1", status="ok", tag="forager/repo-demo:aaa")
    return ImageRecord(**{**base, **kw})


def test_last_record_per_commit_wins_and_a_damaged_line_is_skipped(tmp_path):
    path = tmp_path / "catalog.jsonl"
    append_record(path, record())
    append_record(path, record(commit="c2", tag="forager/repo-demo:bbb", status="install", reason="boom"))
    with open(path, "a") as fh:
        fh.write('{"repo": "half-writ')  # a crash mid-line
        fh.write("\n")
    append_record(path, record(commit="c3", tag="forager/repo-demo:ccc"))
    append_record(path, record(status="low_pass_rate", reason="0.5 < 0.9"))  # c1 rebuilt, now failing

    records = load_records(path)
    assert [(r.commit, r.status) for r in records] == [("c2", "install"), ("c3", "ok"), ("c1", "low_pass_rate")]
    assert set(load_catalog(path)) == {"forager/repo-demo:aaa", "forager/repo-demo:bbb", "forager/repo-demo:ccc"}
    assert [r.tag for r in ok_records(path)] == ["forager/repo-demo:ccc"]
    assert find_ok(path, "demo", "c1") is None and find_ok(path, "demo", "c3").tag == "forager/repo-demo:ccc"


def test_missing_catalog_is_empty(tmp_path):
    assert load_records(tmp_path / "none.jsonl") == [] and ok_records(tmp_path / "none.jsonl") == []
