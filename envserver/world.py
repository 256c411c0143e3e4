"""The world-model side of envs: the state record around each tool call, and forks of a live env.

A fork (`fork(manager, source, request)`) is an env like any other (labels, expiry, reaper, tombstones)
with the source's filesystem and shell state at that moment; the source keeps running. Mechanism, chosen by
measurement (docs/world.md, benchmarks/world_bench.py): on Docker's btrfs driver, `count` containers of the
source's image, each created with a copy-on-write snapshot of the source's layer in place of its own
(envserver/layers.py: one atomic snapshot of the source, which keeps running), created ahead where the
image was forked before (envserver/forkready.py); elsewhere `docker commit` of the source
(paused for the commit) into an image labelled for this server, and `count` containers started from it.
Either way, each fork gets a fresh bash session in which the source's cwd and exported variables are re-created. Running
processes, non-exported variables, functions and aliases are not forked. The fork keeps the source's
grading state (task image, setup patch, grading spec, base commit), so `submit` on a fork grades the
fork's tree against the pristine image in a fresh container, as for any env. A committed image is
removed when the last env started from it is removed, and at server start and stop; the reaper removes
any fork image whose expiry label has passed that this server does not hold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import re
import secrets
import shlex
import time

from envserver.errors import BadRequest
from envserver.forkready import ForkReady
from envserver.models import ForkRequest, StateRecord
from envserver.state import IGNORED_VARS, StateTracker, parse_exports

log = logging.getLogger("envserver")

LABEL_FORK_IMAGE = "forager.fork-image"  # on committed images: the server that made them
LABEL_FORK_OF = "forager.fork_of"  # on a fork env's labels: its source


def tracker_for(manager, env) -> StateTracker:
    return StateTracker(manager.backend, env.container_id, env.workdir, manager.contents, manager.config.state_diff_cap)


async def before_step(manager, env) -> None:
    """The first step of an env takes its baseline (the untouched tree's digests, shared per task)."""
    if env.tracker is None or env.tracker.stats is not None:
        return

    async def load():
        image_id = await asyncio.to_thread(manager.backend.image_id, env.image)
        key = f"{image_id}:{env.workdir}:{hashlib.sha1(env.setup_patch.encode()).hexdigest()}"
        return await manager.baselines.entries(manager.backend, key, env.container_id, env.workdir)

    try:
        await env.tracker.ensure_baseline(env.session, load)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # observational: an env without a baseline records no state, and works on
        log.warning("env %s: no state baseline (%s: %s); state recording off", env.id, type(exc).__name__, exc)
        await env.tracker.close()
        env.tracker = None


async def after_step(env) -> StateRecord | None:
    if env.tracker is None or env.tracker.stats is None:
        return None
    try:
        return await env.tracker.record(env.session)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("env %s: state not recorded (%s: %s)", env.id, type(exc).__name__, exc)
        return None


# ------------------------------------------------------------------ forks


def fork_repository(server_id: str) -> str:
    return "forager-fork/" + _slug(server_id)


def origin_prefix(server_id: str) -> str:
    return _slug(server_id) + "--"


def _slug(server_id: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", server_id.lower()).strip("-._") or "server"


async def fork(manager, source, req: ForkRequest) -> list:
    """`req.count` new envs with the source's files, cwd and exported variables (the caller holds its lock)."""
    config = manager.config
    if len(manager.envs) + req.count > config.max_envs:
        raise BadRequest(f"{req.count} forks would pass this server's maximum of {config.max_envs} envs")
    ttl = min(req.ttl or max(10, int(source.expires_at - time.time())), config.max_ttl)
    exports = source.session.exports
    image_workdir, _ = await asyncio.to_thread(manager.backend.image_config, source.image)
    workdir = None if source.workdir == image_workdir else source.workdir  # None: no stat of it to make
    snapshots = await asyncio.to_thread(lambda: manager.backend.layer_snapshots)
    if config.fork_mechanism == "snapshot" and snapshots is None:
        raise BadRequest("this server forks by layer snapshot, which needs Docker's btrfs driver on this host")
    image = None
    if snapshots is not None and config.fork_mechanism != "commit":
        # The origin is taken while the forks' containers are created (each waits for it before its layer
        # is put in place): the two Docker round trips overlap instead of adding up. Containers created
        # ahead for this image (envserver/forkready.py) skip the create altogether.
        ready = fork_ready(manager).take(source.image, source.limits, req.count)
        taking = asyncio.ensure_future(asyncio.to_thread(manager.backend.snapshot_layer, source.container_id,
                                                         origin_prefix(manager.server_id) + secrets.token_hex(6)))
        origin = concurrent.futures.Future()  # what the forks' threads wait on
        waiting = [origin] + [item.origin for item in ready]

        def hand_over(done) -> None:
            for future in waiting:
                if done.cancelled():
                    future.cancel()
                elif done.exception():
                    future.set_exception(done.exception())
                else:
                    future.set_result(done.result())

        taking.add_done_callback(hand_over)

        def place(container_id: str) -> None:
            snapshots.place(origin.result(timeout=300), container_id)

        try:
            started = await asyncio.gather(
                *(item.task for item in ready),
                *(manager._start_env(source.image, source.limits, ttl, workdir, prepare=place)
                  for _ in range(req.count - len(ready))), return_exceptions=True)
        finally:
            if (made := await _settled(taking)) is not None:
                await asyncio.to_thread(snapshots.drop, made)
        fork_ready(manager).want(source.image, source.limits, req.count)  # for the next fork of this image
    else:
        image = f"{fork_repository(manager.server_id)}:{secrets.token_hex(6)}"
        labels = {LABEL_FORK_IMAGE: manager.server_id, "forager.expires": str(int(time.time() + ttl + 60))}
        await asyncio.to_thread(manager.backend.commit, source.container_id, image, labels)
        manager.fork_images[image] = set()
        started = await asyncio.gather(
            *(manager._start_env(image, source.limits, ttl, workdir) for _ in range(req.count)), return_exceptions=True)
    forks = [e for e in started if not isinstance(e, BaseException)]
    for env in forks if image else ():
        manager.fork_images[image].add(env.id)
        env.fork_image = image
    try:
        failed = next((e for e in started if isinstance(e, BaseException)), None)
        if failed is not None:
            raise failed
        await asyncio.gather(*(_restore_shell(env, source.session.cwd, exports) for env in forks))
    except BaseException:
        await asyncio.gather(*(manager._remove_env(e) for e in forks), return_exceptions=True)
        if image:
            await release_image(manager, image)
        raise
    now = time.time()
    for env in forks:
        env.image, env.limits, env.workdir = source.image, source.limits, source.workdir
        env.base_commit, env.setup_patch, env.grading = source.base_commit, source.setup_patch, source.grading
        env.labels = {**source.labels, **req.labels, LABEL_FORK_OF: source.id}
        env.fork_of, env.created_at, env.expires_at = source.id, now, now + ttl
        env.outputs = source.outputs  # cut outputs are saved as /tmp/forager-output/<n>.log: n goes on as in the source
        env.tracker = source.tracker.clone_for(env.container_id) if source.tracker is not None else None
        manager.envs[env.id] = env
    return forks


def fork_ready(manager) -> ForkReady:
    """The server's containers created ahead of forks (made on first use)."""
    if getattr(manager, "fork_ready", None) is None:
        config = manager.config
        manager.fork_ready = ForkReady(manager, manager.backend.layer_snapshots, config.fork_ready_per_image,
                                       config.fork_ready_total)
    return manager.fork_ready


async def close_fork_ready(manager) -> list:
    """Containers waiting for a fork give up; each is removed as an env that failed to start (returns [])."""
    if getattr(manager, "fork_ready", None) is not None:
        await manager.fork_ready.close()
    return []


async def _restore_shell(env, cwd: str, exports_text: str) -> None:
    """Re-create the source's cwd and exported variables in the fork's fresh bash."""
    wanted, have = parse_exports(exports_text), parse_exports(env.session.exports)
    # One line each, errors ignored: a variable the source made readonly cannot be changed in the fork either.
    lines = [f"builtin unset -v {name} 2>/dev/null" for name in sorted(have)
             if name not in wanted and name not in IGNORED_VARS]
    lines += [f"builtin export {name}={shlex.quote(value)} 2>/dev/null" for name, value in sorted(wanted.items())
              if name not in IGNORED_VARS and have.get(name) != value]
    lines.append(f"builtin cd -- {shlex.quote(cwd)}")
    result = await env.session.run("\n".join(lines), 30)
    if env.session.cwd != cwd:
        raise BadRequest(f"the fork could not enter the source's cwd {cwd}: {result.output[-500:].decode(errors='replace')}")


async def release_image(manager, image: str, env_id: str | None = None) -> None:
    """Forget `env_id` as a user of a fork image; remove the image once nothing uses it."""
    users = manager.fork_images.get(image)
    if users is None:
        return
    users.discard(env_id)
    if not users:
        manager.fork_images.pop(image, None)
        try:
            await asyncio.to_thread(manager.backend.remove_image, image)
        except Exception as exc:  # in use by a container still being removed: the reaper tries again
            log.warning("fork image %s not removed yet: %s", image, exc)


async def remove_leftovers(manager) -> None:
    """What this server's forks left when it last stopped or was killed: committed images, snapshot origins."""
    await remove_fork_images(manager, lambda labels: labels.get(LABEL_FORK_IMAGE) == manager.server_id)
    snapshots = await asyncio.to_thread(lambda: manager.backend.layer_snapshots)
    if snapshots is not None:
        await asyncio.to_thread(snapshots.drop_all, origin_prefix(manager.server_id))


async def remove_fork_images(manager, pick) -> int:
    """Remove the fork images (of any server) that `pick(labels, tags)` selects and this server does not use."""
    images = await asyncio.to_thread(manager.backend.list_images, LABEL_FORK_IMAGE)
    mine = [i for i in images if not set(i["tags"]) & set(manager.fork_images) and pick(i["labels"])]
    await asyncio.gather(*(asyncio.to_thread(manager.backend.remove_image, i["id"]) for i in mine),
                         return_exceptions=True)
    return len(mine)


async def _settled(future):
    """The future's result once it is done, or None if it failed (its error is reported elsewhere)."""
    try:
        return await future
    except Exception:
        return None
