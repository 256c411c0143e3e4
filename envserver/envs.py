"""The live environments of one server: creating, finding, expiring and removing them.

Every container this server starts carries `forager.server=<server id>`, `forager.env=<env id>` and
`forager.expires=<unix time>`. On start the server removes what an earlier run with the same id
left behind; a reaper removes expired envs, containers of ours that no env owns, and any other
container whose own `forager.expires` label has passed (a dead server's envs, a tool's sandbox).
A clean shutdown removes everything it owns.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from envserver import grading, world
from envserver.allowlist import AllowList
from envserver.config import ServerConfig
from envserver.docker_backend import Backend
from envserver.errors import BadRequest, EnvBroken, EnvGone, ImageNotAllowed, UnknownEnv
from envserver.models import CreateEnvRequest, EnvInfo, GradingSpec, Limits, SubmitResponse
from envserver.pool import WarmPool
from envserver.session import BashSession, SessionDied
from envserver.state import Baselines, Contents, StateTracker

log = logging.getLogger("envserver")

LABEL_SERVER, LABEL_ENV, LABEL_EXPIRES, LABEL_KIND = "forager.server", "forager.env", "forager.expires", "forager.kind"
FACTS_CACHED = 64
# A warm container's expiry label must cover the longest env it can become (labels are fixed at create).
POOL_LABEL_TTL = 2 * 86400
TOMBSTONES = 10_000


@dataclass(eq=False)
class Env:
    id: str
    image: str
    container_id: str
    workdir: str
    session: BashSession
    created_at: float
    expires_at: float
    base_commit: str | None = None
    setup_patch: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    grading: GradingSpec | None = None
    status: str = "running"
    gone_reason: str = ""
    broken: bool = False  # gone because of what the agent did in it (not the infrastructure)
    outputs: int = 0
    from_pool: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    limits: Limits | None = None
    tracker: StateTracker | None = None  # records what each step changed (envserver/state.py)
    fork_of: str | None = None
    fork_image: str | None = None  # the committed image this fork's container runs (envserver/world.py)

    def info(self) -> EnvInfo:
        return EnvInfo(
            id=self.id, image=self.image, container_id=self.container_id, status=self.status,
            created_at=self.created_at, expires_at=self.expires_at, workdir=self.workdir,
            base_commit=self.base_commit, labels=self.labels, gradable=self.grading is not None,
            fork_of=self.fork_of, cwd=self.session.cwd,
        )


@dataclass(eq=False)
class Grader:  # a fresh container of an image that grades one submission, then is removed
    id: str
    image: str
    container_id: str


class Manager:
    def __init__(self, config: ServerConfig, backend: Backend):
        self.config = config
        self.backend = backend
        self.server_id = config.resolved_server_id()
        self.allow = AllowList(config.allow, config.catalog_path())
        self.envs: dict[str, Env] = {}
        self.owned: set[str] = set()  # env ids of every container we started and still own (pool, pending, live)
        self.gone: OrderedDict[str, str] = OrderedDict()  # removed env id -> why, so late callers get 409 not 404
        self.pool = WarmPool(self._start_env, self._remove_env, config.pool_fill_parallel)
        self.graders = WarmPool(self._start_grader, self._remove_grader, config.pool_fill_parallel)
        self.facts: OrderedDict[str, grading.ImageFacts] = OrderedDict()  # image id -> facts (images never change)
        self.contents = Contents()
        self.baselines = Baselines(self.contents)  # untouched trees' digests, for the state record
        self.fork_images: dict[str, set[str]] = {}  # committed fork image -> ids of the envs running it
        self._by_container: dict[str, Env] = {}
        self._graders: dict[str, Grader] = {}
        self._background: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._stop_events, self.startup_removed = None, 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self.backend.ping)
        # Whatever an earlier run with our id left (kill -9, power loss): nothing of it is ours any more.
        self.startup_removed = await self._remove_labelled(f"{LABEL_SERVER}={self.server_id}", self._ours)
        await world.remove_leftovers(self)
        loop = asyncio.get_running_loop()
        self._stop_events = self.backend.watch_deaths(
            f"{LABEL_SERVER}={self.server_id}", lambda cid: loop.call_soon_threadsafe(self._container_died, cid)
        )
        self._tasks.append(loop.create_task(self._reaper()))
        for image, size in self.config.pool.items():
            self.pool.want(image, size)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._stop_events:
            self._stop_events()
        warm = [*await world.close_fork_ready(self), *await self.pool.close()]  # forkready.py: none returned
        graders = await self.graders.close()
        envs = list(self.envs.values()) + warm
        self.envs.clear()
        await asyncio.gather(*(self._remove_env(e) for e in envs), *(self._remove_grader(g) for g in graders),
                             *self._background, return_exceptions=True)
        await self._remove_labelled(f"{LABEL_SERVER}={self.server_id}", self._ours)  # anything half-started
        self.fork_images.clear()
        await world.remove_leftovers(self)

    # ------------------------------------------------------------------ envs

    async def create(self, req: CreateEnvRequest) -> Env:
        self._check_ceilings(req)
        if not await asyncio.to_thread(self.allow.allows, req.image):  # may re-read a large catalog
            raise ImageNotAllowed(f"image {req.image!r} is not allowed on this server (allowed: {self.allow.describe()})")
        # 422 when the image is not on this host (nothing is ever pulled)
        image_workdir, _user = await asyncio.to_thread(self.backend.image_config, req.image)
        if req.workdir is not None and not req.workdir.startswith("/"):
            raise BadRequest(f"workdir must be an absolute path, got {req.workdir!r}")
        env = None
        if req.limits == self.config.default_limits and req.workdir in (None, image_workdir):
            size = self.config.pool.get(req.image, self.config.pool_size)
            if size:
                env = self.pool.take(req.image)
                self.pool.want(req.image, size)
                if env is not None:
                    env.from_pool = True
        if env is None:
            env = await self._start_env(req.image, req.limits, req.ttl, req.workdir)
        try:
            if req.setup_patch:
                env.base_commit = await grading.make_base(self.backend, env.container_id, env.workdir, req.setup_patch)
        except BaseException:
            await self._remove_env(env)
            raise
        now = time.time()
        env.created_at, env.expires_at = now, now + req.ttl
        env.labels, env.grading, env.setup_patch = dict(req.labels), req.grading, req.setup_patch
        env.limits = req.limits
        if req.record_state and self.config.record_state:
            env.tracker = world.tracker_for(self, env)
        if req.grading is not None and self.config.grading_pool_size:
            self.graders.want(req.image, self.config.grading_pool_size)  # its submit finds a fresh container ready
        self.envs[env.id] = env
        return env

    def _check_ceilings(self, req: CreateEnvRequest) -> None:
        if len(self.envs) >= self.config.max_envs:
            raise BadRequest(f"this server already holds its maximum of {self.config.max_envs} envs: delete some first")
        ceiling = self.config.max_limits
        over = [f"{k} {v} > {getattr(ceiling, k)}" for k, v in req.limits.model_dump().items() if v > getattr(ceiling, k)]
        if req.ttl > self.config.max_ttl:
            over.append(f"ttl {req.ttl} > {self.config.max_ttl}")
        if over:
            raise BadRequest("over this server's ceilings: " + ", ".join(over))

    def get(self, env_id: str) -> Env:
        env = self.envs.get(env_id)
        if env is None:
            if env_id in self.gone:
                raise EnvGone(f"env {env_id} is gone: {self.gone[env_id]}")
            raise UnknownEnv(f"no env with id {env_id!r} on this server")
        return env

    def live(self, env_id: str) -> Env:
        env = self.get(env_id)
        if env.status != "running":
            raise (EnvBroken if env.broken else EnvGone)(f"env {env_id} is gone: {env.gone_reason}")
        return env

    async def delete(self, env_id: str) -> None:
        env = self.envs.pop(env_id, None) or self.get(env_id)
        self._tombstone(env_id, "deleted")
        await self._remove_env(env)

    def mark_gone(self, env: Env, reason: str, broken: bool = False) -> None:
        if env.status == "running":
            env.status, env.gone_reason, env.broken = "gone", reason, broken
            asyncio.get_running_loop().create_task(env.session.close())

    async def why_dead(self, env: Env) -> tuple[str, bool]:
        """(why the env stopped working, whether the agent's own actions did it). An agent cannot stop its
        container (pid 1 ignores its signals) except by exhausting its memory; a running container whose
        shell cannot start again means the agent removed or broke bash."""
        state = await asyncio.to_thread(self.backend.state, env.container_id)
        if state and state.get("Running"):
            return "its shell could not be restarted (the agent's commands broke or removed it)", True
        if state and state.get("OOMKilled"):
            return "its memory ran out during the agent's commands (the container was killed)", True
        return "its container stopped (killed, removed, or the Docker daemon restarted)", False

    # ------------------------------------------------------------------ grading

    async def submit(self, env: Env) -> SubmitResponse:
        """The agent's patch, graded in a fresh container of the env's image (never in the env itself)."""
        grader = self.graders.take(env.image) or await self._start_grader(env.image)
        try:
            facts = await self._image_facts(grader, env.workdir)
            submission = grading.Submission(env.container_id, env.workdir, env.setup_patch, env.grading)
            return await grading.submit(self.backend, submission, grader.container_id, facts,
                                        patch_cap=self.config.patch_cap)
        finally:
            task = asyncio.get_running_loop().create_task(self._remove_grader(grader))  # off the response's path
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _image_facts(self, grader: Grader, workdir: str) -> grading.ImageFacts:
        image_id = await asyncio.to_thread(self.backend.image_id, grader.image)
        key = f"{image_id}:{workdir}"
        if key not in self.facts:
            self.facts[key] = await grading.image_facts(self.backend, grader.container_id, workdir)
            while len(self.facts) > FACTS_CACHED:
                self.facts.popitem(last=False)
        self.facts.move_to_end(key)
        return self.facts[key]

    async def _start_grader(self, image: str) -> Grader:
        limits = self.config.default_limits
        grader_id = "g-" + secrets.token_hex(6)
        labels = {LABEL_SERVER: self.server_id, LABEL_ENV: grader_id, LABEL_KIND: "grader",
                  LABEL_EXPIRES: str(int(time.time() + POOL_LABEL_TTL))}
        self.owned.add(grader_id)
        try:
            cid, _ = await asyncio.to_thread(
                self.backend.start_container, image, name=f"forager-{grader_id}", labels=labels, cpus=None,
                memory_mb=limits.memory_mb, pids=limits.pids, network_mode=self.config.network_mode,
                disk_mb=limits.disk_mb,
            )
        except BaseException:
            self.owned.discard(grader_id)
            raise
        grader = self._graders[cid] = Grader(grader_id, image, cid)
        return grader

    async def _remove_grader(self, grader: Grader) -> None:
        self._graders.pop(grader.container_id, None)
        try:
            await asyncio.to_thread(self.backend.remove, grader.container_id)
        finally:
            self.owned.discard(grader.id)

    # ------------------------------------------------------------------ internals

    async def _start_env(self, image: str, limits: Limits | None = None, ttl: float | None = None,
                         workdir: str | None = None, prepare=None) -> Env:
        """A running container with its bash session attached and its base commit known. `prepare(id)` runs
        before the container starts (a fork's layer is put in place there: envserver/world.py)."""
        limits = limits or self.config.default_limits
        env_id = secrets.token_hex(6)
        image_workdir, user = await asyncio.to_thread(self.backend.image_config, image)
        now = time.time()
        labels = {
            LABEL_SERVER: self.server_id, LABEL_ENV: env_id, LABEL_KIND: "env",
            LABEL_EXPIRES: str(int(now + (ttl if ttl is not None else POOL_LABEL_TTL))),
        }
        self.owned.add(env_id)  # before the container exists, so the reaper never takes it for an orphan
        cid, session = None, None
        starting = asyncio.ensure_future(asyncio.to_thread(
            self.backend.start_container, image, name=f"forager-{env_id}", labels=labels, cpus=limits.cpus, prepare=prepare,
            memory_mb=limits.memory_mb, pids=limits.pids, network_mode=self.config.network_mode, disk_mb=limits.disk_mb,
        ))
        try:
            try:
                cid, _ = await asyncio.shield(starting)
            except asyncio.CancelledError:
                # Cancelled (shutdown) while Docker starts it: the thread carries on, so wait and remove what it made.
                started = await _settled(starting)
                cid = started[0] if started else None
                raise
            if workdir is None:
                workdir = image_workdir
            else:
                st = await asyncio.to_thread(self.backend.stat, cid, workdir)
                if st is None or not st.is_dir:
                    raise BadRequest(f"workdir {workdir} is not a directory in {image}")
            session = BashSession(self.backend, cid, workdir, user)
            await session.start()
            env = Env(env_id, image, cid, workdir, session, now, now + (ttl or POOL_LABEL_TTL))
            self._by_container[cid] = env
            env.base_commit = None if prepare else await grading.head_commit(session)  # a fork: the source's
            return env
        except BaseException as exc:
            self.owned.discard(env_id)
            if session is not None:
                await session.close()
            if cid:
                self._by_container.pop(cid, None)
                await asyncio.shield(asyncio.to_thread(self.backend.remove, cid))
            if isinstance(exc, SessionDied):
                raise EnvGone(f"the shell could not start in {image}: {exc}") from exc
            raise

    async def _remove_env(self, env: Env) -> None:
        env.status = "gone"
        await env.session.close()
        if env.tracker is not None:
            await env.tracker.close()
        self._by_container.pop(env.container_id, None)
        try:
            await asyncio.to_thread(self.backend.remove, env.container_id)
        finally:
            self.owned.discard(env.id)
            if env.fork_image:
                await world.release_image(self, env.fork_image, env.id)
            if env.grading and not any(e.grading and e.image == env.image and e.status == "running"
                                       for e in self.envs.values()):  # no submit can come: no warm grader
                await asyncio.gather(*map(self._remove_grader, self.graders.release(env.image)))

    def _container_died(self, container_id: str) -> None:
        grader = self._graders.get(container_id)
        if grader is not None and self.graders.discard_dead(grader):
            asyncio.get_running_loop().create_task(self._remove_grader(grader))
            return
        env = self._by_container.get(container_id)
        if env is None:
            return
        if self.pool.discard_dead(env):
            self.owned.discard(env.id)
            asyncio.get_running_loop().create_task(self._remove_env(env))
        else:
            asyncio.get_running_loop().create_task(self._mark_dead(env))

    async def _mark_dead(self, env: Env) -> None:
        self.mark_gone(env, *(await self.why_dead(env)))

    def _ours(self, container: dict) -> bool:
        return container["labels"].get(LABEL_SERVER) == self.server_id

    def _tombstone(self, env_id: str, reason: str) -> None:
        self.gone[env_id] = reason
        while len(self.gone) > TOMBSTONES:
            self.gone.popitem(last=False)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.config.reaper_interval)
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed; trying again next interval")

    async def reap_once(self) -> int:
        now = time.time()
        expired = [e for e in self.envs.values() if e.expires_at <= now]
        for env in expired:
            env.status, env.gone_reason = "gone", "expired (ttl reached)"
        await asyncio.gather(*(self._remove_env(e) for e in expired), return_exceptions=True)
        for env in expired:  # forgotten only once its container is gone
            self.envs.pop(env.id, None)
            self._tombstone(env.id, env.gone_reason)

        def stray(c: dict) -> bool:
            labels = c["labels"]
            if labels.get(LABEL_SERVER) == self.server_id:
                return labels.get(LABEL_ENV) not in self.owned
            # Anyone else's container (another server's, or a tool's sandbox) only once its own expiry passed.
            return _expired(labels, now)

        removed = len(expired) + await self._remove_labelled(LABEL_EXPIRES, stray)
        return removed + await world.remove_fork_images(self, lambda labels: _expired(labels, now))

    async def _remove_labelled(self, label: str, pick) -> int:
        containers = await asyncio.to_thread(self.backend.list_labelled, label)
        mine = [c for c in containers if pick(c)]
        await asyncio.gather(*(asyncio.to_thread(self.backend.remove, c["id"]) for c in mine), return_exceptions=True)
        return len(mine)


def _expired(labels: dict, now: float) -> bool:
    try:
        return float(labels.get(LABEL_EXPIRES, "inf")) < now
    except ValueError:
        return False


async def _settled(future: asyncio.Future):
    """The future's result once it is done, or None if it failed."""
    try:
        return await future
    except Exception:
        return None
