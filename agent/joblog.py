"""Structured per-job logs: one JSON object per line in $FORAGER_HOME/logs/jobs/<job id>.log.

Every try of a job appends to the same file (with its try number), so a retried or re-run job
tells its whole story in one place.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from forager.config import Settings


def job_log_path(job_id: str, settings: Settings | None = None) -> Path:
    return (settings or Settings.from_env()).logs_dir / "jobs" / f"{job_id}.log"


class JobLog:
    def __init__(self, job_id: str, settings: Settings | None = None, **context: Any):
        self.path = job_log_path(job_id, settings)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.context = {"job": job_id, "host": socket.gethostname(), "pid": os.getpid(), **context}

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **self.context, **fields}
        # One write() of one line in append mode: concurrent writers never interleave a line.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


def read_job_log(job_id: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    path = job_log_path(job_id, settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
