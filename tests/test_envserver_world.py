"""World-model data on the real server: the state record of each step, and forks of a live env."""

from __future__ import annotations

import pytest

from envserver.client import EnvGone, UnknownEnv
from envserver.layers import LayerSnapshots
from envserver.world import origin_prefix
from envserver.models import GradingSpec
from tests.fixtures_envserver import containers_of, start_envserver, stop_envserver
from tests.test_envserver_grading import MUTATION as SETUP  # add() returns a - b: test_add fails

GRADING = GradingSpec(test_command="python -m pytest", fail_to_pass=["tests/test_calc.py::test_add"],
                      pass_to_pass=["tests/test_calc.py::test_sub"])


def test_a_step_records_exactly_what_it_changed(envserver, envtest_image):
    with envserver.client() as c:
        env = c.create_env(envtest_image, ttl=300)
        try:
            first = c.shell(env.id, "cat calc.py")
            assert first.state is not None
            assert first.state.files_created == first.state.files_modified == first.state.files_deleted == []
            assert first.state.diff == "" and first.state.tree_digest.startswith("sha256:")
            assert c.shell(env.id, "ls -la; git status --short; python -c 'print(1)'").state.tree_digest == \
                first.state.tree_digest  # read-only commands change nothing

            edited = c.edit(env.id, "calc.py", "return a - b", "return a * b")
            st = edited.state
            assert st.files_modified == ["calc.py"] and not st.files_created and not st.files_deleted
            assert st.diff == ("--- a/calc.py\n+++ b/calc.py\n@@ -3,4 +3,4 @@\n \n \n def sub(a, b):\n"
                               "-    return a - b\n+    return a * b\n")
            assert st.tree_digest != first.state.tree_digest and not st.diff_truncated

            made = c.shell(env.id, "mkdir -p pkg && printf 'x\\n' > pkg/new.txt && rm tabs.py").state
            assert made.files_created == ["pkg/new.txt"] and made.files_deleted == ["tabs.py"]
            assert "+++ b/pkg/new.txt\n@@ -0,0 +1 @@\n+x\n" in made.diff
            # caches and .git are not the repository's state
            assert c.shell(env.id, "python -m pytest -q >/dev/null; git add -A").state.files_created == []

            # putting every file back returns to the first digest: the digest is of content, not of history
            back = c.shell(env.id, "rm -r pkg && git reset -q && git checkout -q -- tabs.py && "
                                   "sed -i 's/a \\* b/a - b/' calc.py").state
            assert back.tree_digest == first.state.tree_digest
            assert set(back.files_deleted) == {"pkg/new.txt"} and set(back.files_created) == {"tabs.py"}
        finally:
            c.delete_env(env.id)


def test_cd_and_export_show_in_the_shell_state_and_observations_stay_the_same(envserver, envtest_image):
    with envserver.client() as c:
        env = c.create_env(envtest_image, ttl=300)
        quiet = c.create_env(envtest_image, ttl=300, record_state=False)
        try:
            st = c.shell(env.id, "cd tests && export FOO='a b\"c' && export BAR=1").state
            assert st.cwd == "/repo/tests" and st.cwd_changed
            assert st.env_changed == {"BAR": "1", "FOO": 'a b"c'}
            st = c.shell(env.id, "unset BAR; export FOO=2").state
            assert st.env_changed == {"BAR": None, "FOO": "2"} and not st.cwd_changed
            assert c.shell(env.id, "true").state.env_changed == {}
            # the record is beside the observation, never in it; an env may opt out
            for cmd in ("echo hi; pwd", "env | grep -c FORAGER || true"):
                assert c.shell(env.id, "cd /repo; " + cmd).output == c.shell(quiet.id, cmd).output
            assert c.shell(quiet.id, "true").state is None
        finally:
            c.delete_env(env.id)
            c.delete_env(quiet.id)


def snapshots_here(docker_client) -> LayerSnapshots | None:
    return LayerSnapshots.find(docker_client.api.info())


@pytest.fixture(params=["auto", "commit"])
def fork_server(request, envserver, tmp_path):
    """The session's server (auto: layer snapshots on btrfs, as `forager setup` makes Docker here) and one that
    forks by `docker commit`: the same semantics, so the same test."""
    if request.param == "auto":
        yield envserver
        return
    server = start_envserver("--fork-mechanism", "commit", home=tmp_path)
    yield server
    stop_envserver(server)


def test_a_fork_has_the_sources_files_cwd_and_variables_and_its_own_future(fork_server, envtest_image, docker_client):
    envserver = fork_server
    committing = "commit" in envserver.args or snapshots_here(docker_client) is None
    with envserver.client() as c:
        src = c.create_env(envtest_image, ttl=300, setup_patch=SETUP, grading=GRADING, labels={"task": "t1"})
        forks = []
        try:
            c.shell(src.id, "echo draft > notes.txt && cd tests && export STAGE=forked && pip --version >/dev/null")
            c.shell(src.id, "echo outside > /opt/outside.txt")  # outside the repository: forked too
            before = c.shell(src.id, "true").state.tree_digest
            forks = c.fork(src.id, 2, labels={"branch": "x"})
            assert len(forks) == 2 and {f.fork_of for f in forks} == {src.id}
            assert forks[0].labels == {"task": "t1", "branch": "x", "forager.fork_of": src.id} and forks[0].gradable
            a, b = forks
            out = c.shell(a.id, "pwd; echo $STAGE; cat ../notes.txt /opt/outside.txt")
            assert out.output == "/repo/tests\nforked\ndraft\noutside\n"
            assert out.state.tree_digest == before  # the same state, recorded in the fork
            c.shell(a.id, "echo A > ../notes.txt; export STAGE=a")
            assert c.shell(b.id, "cat ../notes.txt; echo $STAGE").output == "draft\nforked\n"
            assert c.shell(src.id, "cat ../notes.txt; echo $STAGE").output == "draft\nforked\n"
            assert c.shell(src.id, "true").state.tree_digest == before

            # grading a fork grades the fork's tree: fix it in one fork only
            c.edit(b.id, "/repo/calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")
            graded_b, graded_src = c.submit(b.id), c.submit(src.id)
            assert graded_b.reward == 1.0 and "calc.py" in graded_b.patch and "notes.txt" in graded_b.patch
            assert graded_src.reward == 0.0 and "calc.py" not in graded_src.patch
            # by the mechanism the server chose: a fork runs the source's image (snapshot) or a committed one
            images = {docker_client.api.inspect_container(f.container_id)["Config"]["Image"] for f in forks}
            assert (images != {envtest_image}) if committing else (images == {envtest_image}), images
        finally:
            for env in [src, *forks]:
                c.delete_env(env.id)
        with pytest.raises(EnvGone):
            c.fork(src.id)
        with pytest.raises(UnknownEnv):
            c.fork("nope")
        # the committed image went with its last fork; no snapshot origin outlives a fork call
        assert not docker_client.api.images(filters={"label": f"forager.fork-image={envserver.server_id}"})
        if (snapshots := snapshots_here(docker_client)) is not None:
            assert not list(snapshots.origins.glob(origin_prefix(envserver.server_id) + "*"))


@pytest.mark.parametrize("mechanism", ["auto", "commit"])
def test_forks_are_never_leaked(docker_client, envtest_image, tmp_path, mechanism):
    server_id = f"test-forks-{tmp_path.name}"
    committing = mechanism == "commit" or snapshots_here(docker_client) is None
    first = start_envserver("--fork-mechanism", mechanism, home=tmp_path, server_id=server_id)
    try:
        with first.client() as c:
            src = c.create_env(envtest_image, ttl=600)
            c.fork(src.id, 2)
            assert len(running(docker_client, server_id)) == 3  # (and, by snapshot, containers made for the next fork)
            assert bool(docker_client.api.images(filters={"label": f"forager.fork-image={server_id}"})) == committing
    finally:
        stop_envserver(first, kill=True)
    assert len(running(docker_client, server_id)) == 3  # kill -9 left them behind
    snapshots = snapshots_here(docker_client)
    if snapshots is not None:  # as if killed inside a fork call, between its origin snapshot and its removal
        leftover = snapshots.take(containers_of(docker_client, server_id)[0]["Id"], origin_prefix(server_id) + "killed")
    second = start_envserver("--fork-mechanism", mechanism, home=tmp_path, server_id=server_id)
    try:
        assert containers_of(docker_client, server_id) == []  # removed at start, the forks with the rest
        assert snapshots is None or not leftover.exists()
        assert not docker_client.api.images(filters={"label": f"forager.fork-image={server_id}"})
        with second.client() as c:
            src = c.create_env(envtest_image, ttl=600)
            c.fork(src.id, 1)
    finally:
        stop_envserver(second)  # a clean stop removes envs, forks and their images
    assert containers_of(docker_client, server_id) == []
    assert not docker_client.api.images(filters={"label": f"forager.fork-image={server_id}"})


def test_the_find_probe_records_what_the_walker_does_and_a_killed_probe_comes_back(envserver, envtest_image):
    """Images without python3 get the `find` probe: same digests. The agent may kill the probe: that step
    records nothing, the next one records again."""
    import asyncio

    from envserver.docker_backend import Backend
    from tests.fixtures_envserver import labelled_container
    from envserver.session import BashSession
    from envserver.state import Contents, StateTracker

    async def digests(no_walker: bool) -> list[str]:
        backend = Backend()
        cid = labelled_container(backend, envtest_image)
        try:
            session = BashSession(backend, cid, "/repo")
            await session.start()
            tracker = StateTracker(backend, cid, "/repo", Contents(), 65536)
            tracker._no_walker = no_walker

            async def no_baseline():
                return {}  # differs from the tree: the tracker reads its own

            await tracker.ensure_baseline(session, no_baseline)
            out = []
            for cmd in ("true", "printf 'x\\n' > n.txt && ln -s n.txt link && chmod +x calc.py", "rm tabs.py"):
                await session.run(cmd, 30)
                out.append((await tracker.record(session)).tree_digest)
            assert type(tracker.probe).__name__ == ("FindProbe" if no_walker else "PythonProbe")
            return out
        finally:
            backend.remove(cid)

    walker, find = asyncio.run(digests(False)), asyncio.run(digests(True))
    assert walker == find and len(set(walker)) == 3

    with envserver.client() as c:
        env = c.create_env(envtest_image, ttl=300)
        try:
            before = c.shell(env.id, "true").state.tree_digest
            c.shell(env.id, "kill -9 -1; sleep 1")  # takes the probe down with everything else
            after = c.shell(env.id, "echo y > y.txt").state
            assert after is not None and after.files_created == ["y.txt"] and after.tree_digest != before
        finally:
            c.delete_env(env.id)


def running(docker_client, server_id: str) -> list[dict]:
    return [c for c in containers_of(docker_client, server_id) if c["State"] == "running"]


def test_a_second_fork_uses_containers_made_ahead_and_is_the_same(docker_client, envtest_image, tmp_path):
    """After a fork of an image, containers for its next forks are created ahead (envserver/forkready.py): the
    next fork starts them with the source's state then, and a clean stop removes the ones left waiting."""
    if snapshots_here(docker_client) is None:
        pytest.skip("forks by snapshot need Docker's btrfs driver on this host")
    server_id = f"test-ready-{tmp_path.name}"
    server = start_envserver(home=tmp_path, server_id=server_id)
    try:
        with server.client() as c:
            src = c.create_env(envtest_image, ttl=600)
            c.fork(src.id, 2)

            def waiting() -> set[str]:
                return {x["Id"] for x in containers_of(docker_client, server_id) if x["State"] == "created"}

            from tests.test_fleet_support import wait_for

            ahead = wait_for(lambda: len(waiting()) == 2 and waiting(), "two containers made ahead of the next fork")
            c.shell(src.id, "echo second > notes.txt && cd tests && export STAGE=two")
            forks = c.fork(src.id, 2)
            assert {f.container_id for f in forks} == ahead  # the ones made ahead, not new ones
            for f in forks:
                assert c.shell(f.id, "pwd; echo $STAGE; cat ../notes.txt").output == "/repo/tests\ntwo\nsecond\n"
                assert c.get_env(f.id).workdir == src.workdir
    finally:
        stop_envserver(server)
    assert containers_of(docker_client, server_id) == []  # the ones still waiting went with the server
