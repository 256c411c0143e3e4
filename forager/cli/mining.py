"""What the mining verbs (`forager tasks mine`, `forager run --issue-fix`) hand down to forager.tasks.mine: where
an entry's history is, the builder for its parent commits, and a grader for certificates.

The grader is the env server at FORAGER_ENVSERVER_URL when one answers there; otherwise a local one is
started for the verb's duration (agent.services.LocalServices, loopback only) and stopped at the end, so
`forager tasks mine` works on a machine with nothing running beyond what `forager setup` installs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from agent.services import LocalServices, envserver_reachable
from envserver.client import EnvClient
from forager.config import Settings
from forager.errors import MiningError, SourceError
from forager.models import ImageRecord, RepoSpec
from forager.tasks.history import ensure_repo
from images import sources
from images.build import BuildOptions, build_repo

# The builder validates each parent image with one run of its suite, not two: mining repeats the tests it
# grades on (3 runs before and after the fix) and drops flaky ones itself, so a second suite run per parent
# would only double the cost of the commonest step. Its pass-rate gate is lowered to a half: a commit of
# real history often has a few failing tests (a bug not fixed yet, a newer dependency), and what decides a
# task is mining's own before/after runs; the gate only has to say the environment works at all.
PARENT_BUILD = BuildOptions(runs=1, min_pass_rate=0.5)


@dataclass
class MiningTarget:
    spec: RepoSpec
    history: str  # the git directory walked (the repository itself, or the builder's mirror of it)
    source: str  # the entry without its ref: `<source>@<sha>` builds that commit
    revisions: str  # what is walked: --range, else the entry's ref, else HEAD


def mining_target(spec: RepoSpec, settings: Settings, revisions: str | None = None, log=lambda _m: None) -> MiningTarget:
    """Where an entry's history is (fetched into the builder's mirrors if remote); MiningError if it has none."""
    if spec.kind == "pypi":
        raise MiningError(f"{spec.source}: a PyPI sdist has no git history to mine")
    if spec.kind == "local":
        ensure_repo(spec.location)
        history, source = spec.location, spec.location
    else:
        try:
            mirror, _sha = sources.fetch(spec, settings.mirror_dir, log)
        except SourceError as exc:
            raise MiningError(f"{spec.source}: {exc}") from exc
        history = str(mirror.git_dir)
        source = spec.source.rsplit("@", 1)[0] if spec.ref else spec.source
    return MiningTarget(spec, history, source, revisions or spec.ref or "HEAD")


def parent_builder(spec: RepoSpec, settings: Settings) -> Callable[[str], ImageRecord]:
    """build(entry) for the entry's commits, with the entry's overrides (python, install, test command, packages)."""
    overrides = {k: getattr(spec, k) for k in ("python", "install", "test_command") if getattr(spec, k) is not None}
    if spec.system_packages:
        overrides["system_packages"] = spec.system_packages

    def build(entry: str) -> ImageRecord:
        return build_repo(sources.parse_entry(entry, **overrides), settings, PARENT_BUILD)

    return build


@contextmanager
def env_grader(settings: Settings, log=lambda _m: None) -> Iterator[EnvClient]:
    """A client of the env server that certifies tasks: the configured one, or one started here."""
    if envserver_reachable(settings.envserver_url, settings.envserver_token):
        with EnvClient(settings.envserver_url, token=settings.envserver_token) as client:
            yield client
        return
    with LocalServices(settings, workers=0, log=log) as services:
        services.ensure_envserver()
        with EnvClient(settings.envserver_url, token=settings.envserver_token) as client:
            yield client
