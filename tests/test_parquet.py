"""`forager export --format parquet`: trajectories, tasks and traces as Parquet shards with a dataset card, loaded
with `datasets.load_dataset("parquet", ...)`, give back the records of the JSONL exports (the round trip)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: nothing may reach the hub
from datasets import load_dataset  # noqa: E402
from typer.testing import CliRunner

from forager.cli.app import app
from tests.fixtures_viewer import write_viewer_store


def pruned(value):
    """A record with null values dropped: Parquet's columns are the union of the records' keys, so a key a
    record lacks reads back as null."""
    if isinstance(value, dict):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def parquet_rows(directory: Path) -> list[dict]:
    cache = directory.parent.parent / "hf-cache"
    return list(load_dataset("parquet", data_files=str(directory / "*.parquet"), split="train", cache_dir=str(cache)))


def test_the_parquet_dataset_holds_the_records_of_the_jsonl_exports(forager_home, tmp_path):
    write_viewer_store(forager_home)
    out = tmp_path / "dataset"
    done = cli("export", "--format", "parquet", "-o", str(out), "--with-state")
    assert done["rows"]["trajectories"] > 10 and done["rows"]["tasks"] > 1 and done["rows"]["traces"] > 1

    expected = {
        "trajectories": jsonl_rows(Path(cli("export", "--format", "chat", "--with-state",
                                            "-o", str(tmp_path / "chat.jsonl"))["out"])),
        "traces": jsonl_rows(Path(cli("export", "--format", "cwm-trace", "-o", str(tmp_path / "t.jsonl"))["out"])),
    }
    cli("tasks", "export", "--format", "swebench", "-o", str(tmp_path / "tasks.jsonl"))
    expected["tasks"] = jsonl_rows(tmp_path / "tasks.jsonl")
    for part, records in expected.items():
        rows = parquet_rows(out / part)
        assert [pruned(r) for r in rows] == [pruned(r) for r in records], part
    # a record with tool calls and state survives whole
    chat = parquet_rows(out / "trajectories")
    calls = [m for r in chat for m in r["messages"] if m.get("tool_calls")]
    assert calls and json.loads(calls[0]["tool_calls"][0]["function"]["arguments"])
    assert any(m.get("state") for r in chat for m in r["messages"])

    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: trajectories\n") and "path: tasks/*.parquet" in card
    by_config = load_dataset(str(out), "traces", split="train", cache_dir=str(tmp_path / "hf-cache"))  # the card's configs, as the hub reads them
    assert len(by_config) == done["rows"]["traces"]


def test_triples_and_cwm_records_round_trip_too(forager_home, tmp_path):
    write_viewer_store(forager_home)
    out = tmp_path / "dataset"
    cli("export", "--format", "parquet", "-o", str(out), "--tree", "triples")
    triples = jsonl_rows(Path(cli("export", "--format", "chat", "--tree", "triples", "-o",
                                  str(tmp_path / "triples.jsonl"))["out"]))
    rows = parquet_rows(out / "trajectories")
    for row in rows:  # free-form keys (exported variables) are JSON text
        row["next_state"] = json.loads(row["next_state"]) if row["next_state"] is not None else None
    assert [pruned(r) for r in rows] == [pruned(r) for r in triples]

    cli("export", "--format", "parquet", "-o", str(out), "--records", "cwm")  # replaces the dataset
    cwm = jsonl_rows(Path(cli("export", "--format", "cwm", "-o", str(tmp_path / "cwm.jsonl"))["out"]))
    assert [pruned(r) for r in parquet_rows(out / "trajectories")] == [pruned(r) for r in cwm]
