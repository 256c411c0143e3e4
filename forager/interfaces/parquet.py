"""Datasets in the format the Hugging Face hub uses: Parquet shards and a dataset card.

    OUT/README.md                                   the card: one config per part, what its columns hold
    OUT/trajectories/train-00000-of-00002.parquet   the records of `forager export --format chat|cwm [--tree]`
    OUT/tasks/train-00000-of-00001.parquet          the records of `forager tasks export --format swebench`
    OUT/traces/train-00000-of-00001.parquet         the records of `forager export --format cwm-trace`

The rows are the JSONL exports' own records, made by the same functions, so `load_dataset("parquet",
data_files="OUT/trajectories/*.parquet")` gives the same records as the JSONL export (tests/test_parquet.py).
Parquet columns are the union of the records' keys: a key a record lacks reads back as null. A column whose
values are objects with free-form keys (a triple's `next_state`, whose `env_changed` is keyed by variable
names) is stored as JSON text, named in the card. The schema is unified over all records before the first
shard is written (records are read twice), so every shard has the same one and `datasets` loads them together.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JSON_COLUMNS = {"next_state"}  # free-form keys: JSON text
DESCRIPTIONS = {
    "trajectories": "one row per episode (chat: the messages a model was sent, `protocol`; cwm: `turns` and `text` "
                    "in CWM's format), or with `--tree triples` one row per step: (state, action) -> observation",
    "tasks": "one row per repair task in SWE-bench's instance format (FAIL_TO_PASS/PASS_TO_PASS JSON-encoded, as "
             "SWE-bench does), plus `source`, `test_command` and, for mutate-fix tasks, `setup_patch`",
    "traces": "one row per Python execution trace: `text` in CWM's trace format, `function`, `repo`, `truncated`",
}


def _encoded(record: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in record.items()}


def write_part(records: Callable[[], Iterable[dict[str, Any]]], out_dir: Path, *, shard_rows: int = 5000) -> int:
    """Write the records `records()` yields (called twice) as Parquet shards in `out_dir`; returns the row count."""
    schemas, rows = [], 0
    for chunk in _chunks(records(), shard_rows):
        schemas.append(pa.Table.from_pylist(chunk).schema)
        rows += len(chunk)
    if not rows:
        return 0
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    shards = -(-rows // shard_rows)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for i, chunk in enumerate(_chunks(records(), shard_rows)):
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), tmp / f"train-{i:05d}-of-{shards:05d}.parquet")
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)  # a failed export leaves the old part, never half a new one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rows


def _chunks(records: Iterable[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    it = iter(records)
    while chunk := [_encoded(r) for r in islice(it, size)]:
        yield chunk


def export_dataset(parts: dict[str, Callable[[], Iterable[dict[str, Any]]]], out: str | Path, *,
                   shard_rows: int = 5000, how: str = "", on_part: Callable[[str, int], None] | None = None
                   ) -> dict[str, int]:
    """Each part (trajectories, tasks, traces: a callable giving its records) as a config of one dataset in
    `out`, with its card. Parts without records are left out. Returns the row count per part."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name, records in parts.items():
        counts[name] = write_part(records, out / name, shard_rows=shard_rows)
        if not counts[name]:
            shutil.rmtree(out / name, ignore_errors=True)
        if on_part:
            on_part(name, counts[name])
    (out / "README.md").write_text(card(counts, how), encoding="utf-8")
    return counts


def card(counts: dict[str, int], how: str = "") -> str:
    """The dataset card: a YAML header with one config per part (the hub's viewer and `load_dataset` read it)."""
    present = [name for name, n in counts.items() if n]
    configs = "".join(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/*.parquet\n"
                      for name in present)
    lines = [f"---\nconfigs:\n{configs}tags:\n- code\n- agents\n- forager\n---\n", "# Forager dataset\n",
             "Made by Forager (executable repository environments and agent trajectories). "
             + (f"Exported with `{how}`. " if how else "")
             + "Each config is one part of the data, with the same records as Forager's JSONL exports.\n"]
    for name in present:
        lines.append(f"\n## {name} ({counts[name]} rows)\n\n{DESCRIPTIONS.get(name, '')}.\n")
    json_cols = ", ".join(f"`{c}`" for c in sorted(JSON_COLUMNS))
    lines.append(f"\nColumns are the union of the records' keys (a key a record lacks is null); {json_cols} is JSON "
                 "text (free-form keys).\n\n```python\nfrom datasets import load_dataset\n"
                 + "".join(f'{name} = load_dataset("parquet", data_files="{name}/*.parquet", split="train")\n'
                           for name in present) + "```\n")
    return "".join(lines)
