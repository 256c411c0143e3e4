"""Server settings: one pydantic model, filled by `forager serve`, `python -m envserver` or a test."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from envserver.models import Limits


def default_home() -> Path:
    return Path(os.environ.get("FORAGER_HOME", str(Path.home() / ".forager"))).expanduser()


class ServerConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = Field(default=None, description="bearer token every client must send (required, also on loopback)")
    server_id: str | None = Field(
        default=None, description="labels this server's containers; stable across restarts (default: host-port)"
    )
    allow: list[str] = Field(
        default_factory=list, description="allowed images: exact tags or globs such as 'forager/*'"
    )
    catalog: Path | None = Field(
        default=None, description="builder catalog (JSONL); tags of records with status 'ok' are allowed"
    )
    use_default_catalog: bool = Field(default=True, description="also read $FORAGER_HOME/catalog.jsonl if it exists")
    pool_size: int = Field(default=0, ge=0, le=512, description="warm containers kept per image once requested")
    pool: dict[str, int] = Field(default_factory=dict, description="image -> warm containers, filled at start")
    pool_fill_parallel: int = Field(default=4, ge=1, le=64)
    reaper_interval: float = Field(default=30.0, gt=0)
    default_limits: Limits = Field(default_factory=Limits)
    network_mode: str = Field(default="none", description="operator setting; clients cannot change it")
    default_timeout: float = Field(default=120.0, gt=0)
    max_timeout: float = Field(default=3600.0, gt=0)
    output_cap: int = Field(default=480 * 1024, ge=1024, description="bytes of shell output returned before cutting")
    max_body: int = Field(default=10 * 1024 * 1024, ge=1024, description="largest request body, bytes")
    max_file_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="largest file edit/create handles")
    patch_cap: int = Field(default=4 * 1024 * 1024, ge=1024, description="largest patch a submit grades, bytes")
    grading_pool_size: int = Field(default=1, ge=0, le=64, description="warm grading containers per graded image")
    max_envs: int = Field(default=512, ge=1, description="live envs this server holds at most")
    fork_ready_per_image: int = Field(default=16, ge=0, le=64,
                                      description="containers created ahead of forks of an image already forked")
    fork_ready_total: int = Field(default=32, ge=0, description="containers created ahead of forks, in all")
    max_ttl: int = Field(default=86400, ge=10, description="ceiling on an env's ttl, seconds")
    max_limits: Limits = Field(
        default_factory=lambda: Limits(cpus=8, memory_mb=16384, pids=4096, disk_mb=51200),
        description="ceilings on what one env may ask for",
    )
    require_disk_quota: bool = Field(default=False, description="refuse to start where envs cannot get a disk quota")
    docker_threads: int = Field(default=64, ge=4, description="threads for blocking Docker API calls")
    record_state: bool = Field(default=True, description="record what each tool call changed (envs may opt out)")
    fork_mechanism: Literal["auto", "snapshot", "commit"] = Field(
        default="auto", description="how forks copy an env: snapshot of its btrfs layer, docker commit, auto: the first that works")
    state_diff_cap: int = Field(default=64 * 1024, ge=1024, description="bytes of a step's diff kept in its state record")

    def resolved_server_id(self) -> str:
        return self.server_id or f"{socket.gethostname()}-{self.port}"

    def catalog_path(self) -> Path | None:
        if self.catalog:
            return self.catalog
        if self.use_default_catalog:
            return default_home() / "catalog.jsonl"
        return None

    def check(self) -> None:
        """Refuse to serve without a token: any local user or process (a build's setup.py, an env with a
        network) could otherwise drive containers through a loopback server."""
        if not self.token:
            raise ValueError("a token is required (--token, --token-file or FORAGER_ENVSERVER_TOKEN); "
                             "`forager serve` passes this host's $FORAGER_HOME/envserver.token")
        if len(self.token) < 16 and not is_loopback(self.host):
            raise ValueError(f"refusing to bind {self.host} with a token under 16 characters")
        if self.default_timeout > self.max_timeout:
            raise ValueError("default_timeout is above max_timeout")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
