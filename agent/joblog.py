"""Structured per-job logs: one JSON object per line in $FORAGER_HOME/logs/jobs/<job id>.log.

Every try of a job appends to the same file (with its try number), so a retried or re-run job
tells its whole story in one place.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from forager import jsonl
from forager.config import Settings


def job_log_path(job_id: str, settings: Settings) -> Path:
    return settings.logs_dir / "jobs" / f"{job_id}.log"


class JobLog:
    def __init__(self, job_id: str, settings: Settings, **context: Any):
        self.path = job_log_path(job_id, settings)
        self.context = {"job": job_id, "host": socket.gethostname(), "pid": os.getpid(), **context}

    def __call__(self, event: str, **fields: Any) -> None:
        jsonl.append(self.path, [{"ts": round(time.time(), 3), "event": event, **self.context, **fields}])


def read_job_log(job_id: str, settings: Settings) -> list[dict[str, Any]]:
    return list(jsonl.objects(job_log_path(job_id, settings)))
