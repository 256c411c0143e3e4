"""Where Forager keeps its data and which services it talks to.

Everything is overridable by environment variables so tests, CI and multi-host
deployments can point the same code at different places without a config file.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

BASE_IMAGE_REPO = "forager/base"
DEFAULT_PYTHON = "3.11"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class Settings(BaseModel):
    """Runtime settings, read from FORAGER_* environment variables."""

    home: Path = Field(description="root of all Forager data (catalog, tasks, trajectories, logs)")
    redis_url: str = "redis://127.0.0.1:6379/0"
    envserver_url: str = "http://127.0.0.1:8765"
    envserver_token: str | None = None
    queue: str = "forager"
    model_base_url: str | None = None
    model_name: str | None = None
    model_api_key: str | None = None
    model_protocol: str = "tools"  # openai policy: "tools" (native function calling) or "text" (CWM's tags)

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            home=Path(_env("FORAGER_HOME", str(Path.home() / ".forager"))).expanduser(),
            redis_url=_env("FORAGER_REDIS_URL", "redis://127.0.0.1:6379/0"),
            envserver_url=_env("FORAGER_ENVSERVER_URL", "http://127.0.0.1:8765"),
            envserver_token=os.environ.get("FORAGER_ENVSERVER_TOKEN") or None,
            queue=_env("FORAGER_QUEUE", "forager"),
            model_base_url=os.environ.get("FORAGER_MODEL_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or None,
            model_name=os.environ.get("FORAGER_MODEL") or None,
            model_api_key=os.environ.get("FORAGER_MODEL_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
            model_protocol=_env("FORAGER_MODEL_PROTOCOL", "tools"),
        )

    # Layout of the data directory: one place to change it.
    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.jsonl"

    @property
    def build_dir(self) -> Path:
        return self.home / "build"

    @property
    def mirror_dir(self) -> Path:
        return self.home / "mirrors"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def tasks_dir(self) -> Path:
        return self.home / "tasks"

    @property
    def trajectories_dir(self) -> Path:
        return self.home / "trajectories"

    @property
    def traces_dir(self) -> Path:
        return self.home / "traces"


def base_image_tag(python: str = DEFAULT_PYTHON) -> str:
    return f"{BASE_IMAGE_REPO}:py{python}"
