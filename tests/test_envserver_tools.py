"""The four tools and the typed errors, through the real server, real Docker, real HTTP on loopback."""

from __future__ import annotations

import base64

import pytest

from envserver.client import BadRequest, EnvGone, ImageNotAllowed, UnknownEnv
from tests.fixtures_envserver import ODD_FILES


@pytest.fixture(scope="module")
def client(envserver):
    with envserver.client() as c:
        yield c


@pytest.fixture(scope="module")
def env(client, envtest_image):
    info = client.create_env(envtest_image, ttl=900, labels={"test": "tools"})
    yield info
    client.delete_env(info.id)


def test_env_info_and_listing(client, env, envserver, docker_client):
    assert env.status == "running" and env.workdir == "/repo" and env.labels == {"test": "tools"}
    assert len(env.base_commit) == 40
    assert env.id in {e.id for e in client.list_envs()}
    assert client.get_env(env.id).container_id == env.container_id
    c = docker_client.containers.get(env.container_id)
    labels = c.labels
    assert labels["forager.server"] == envserver.server_id and labels["forager.env"] == env.id
    assert int(labels["forager.expires"]) >= int(env.created_at)
    hc = c.attrs["HostConfig"]
    assert hc["NetworkMode"] == "none" and not hc.get("Init")  # pid 1 is our own reaping loop, not docker-init
    assert hc["NanoCpus"] > 0 and hc["Memory"] > 0 and hc["PidsLimit"] > 0
    assert not hc["Privileged"] and not hc["Binds"]
    assert hc["CapDrop"] == ["ALL"] and "SYS_CHROOT" not in hc["CapAdd"] and "MKNOD" not in hc["CapAdd"]
    assert "no-new-privileges" in hc["SecurityOpt"]


def test_shell_merges_output_in_order_and_reports_exit_code(client, env):
    r = client.shell(env.id, "echo one; echo two >&2; echo three; exit_code_test() { return 7; }; exit_code_test")
    assert r.output == "one\ntwo\nthree\n"
    assert r.exit_code == 7 and not r.timed_out and not r.truncated


def test_shell_cwd_and_exports_persist(client, env):
    client.shell(env.id, "mkdir -p /tmp/work && cd /tmp/work && export FORAGER_X=42")
    r = client.shell(env.id, 'pwd; echo "$FORAGER_X"')
    assert r.output == "/tmp/work\n42\n"
    client.shell(env.id, "cd /repo")


def test_shell_odd_commands_do_not_break_the_session(client, env):
    r = client.shell(env.id, 'echo "unterminated')
    assert r.exit_code != 0 and "unexpected EOF" in r.output
    assert client.shell(env.id, "cat").output == ""  # stdin is /dev/null: no hang
    assert client.shell(env.id, "printf 'no newline'").output == "no newline"
    assert client.shell(env.id, "cat <<'EOF'\n$HOME 'q' \"d\" \\\nEOF").output == "$HOME 'q' \"d\" \\\n"
    body = "".join(f"line {i} with 'quotes' and $dollars\n" for i in range(6000))  # ~200 KB: sent as a file
    r = client.shell(env.id, f"cat > /tmp/big.txt <<'EOF'\n{body}EOF\nwc -l < /tmp/big.txt; cd /tmp")
    assert r.output == "6000\n" and client.shell(env.id, "pwd; cd /repo").output == "/tmp\n"
    assert client.shell(env.id, "cat /tmp/big.txt").output == body
    r = client.shell(env.id, "exit 5")
    assert r.exit_code == 5
    assert client.shell(env.id, "pwd").output == "/repo\n"  # a fresh shell, same directory


def test_timeout_kills_the_process_group_and_the_session_recovers(client, env):
    r = client.shell(env.id, "echo started; sleep 1234 & sleep 1235", timeout=2)
    assert r.timed_out and r.exit_code is None and r.output.startswith("started\n")
    # Neither the foreground sleep nor its background sibling survives, inside the container.
    ps = client.shell(env.id, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -o 'sleep 123[45]' || true")
    assert ps.output == ""
    assert client.shell(env.id, "echo alive").output == "alive\n"


def test_output_over_the_cap_is_cut_and_saved_in_the_container(client, env):
    r = client.shell(env.id, "head -c 10000000 /dev/zero | tr '\\0' a; echo; echo END")
    assert r.truncated and r.exit_code == 0
    assert len(r.output) < 600_000 and r.output.rstrip().endswith("END")
    assert r.full_output_path and r.full_output_path in r.output
    assert client.shell(env.id, f"wc -c < {r.full_output_path}").output.strip() == str(10_000_000 + 1 + 4)


def test_edit_replaces_exactly_once_and_keeps_untouched_bytes(client, env):
    ok = client.edit(env.id, "tabs.py", "return 2", "return 3")
    assert ok.ok and "\treturn 3" in ok.output and "     6\t" in ok.output
    crlf = client.edit(env.id, "/repo/crlf.txt", "beta\ngamma", "BETA\ngamma")
    assert crlf.ok
    raw = client.shell(env.id, "cat tabs.py crlf.txt | base64 -w0").output
    assert base64.b64decode(raw) == ODD_FILES["tabs.py"].replace(b"return 2", b"return 3") + b"alpha\r\nBETA\r\ngamma\r\n"


def test_edit_errors_are_tool_errors(client, env):
    client.create(env.id, "dup.txt", "x = 1\ny = 2\nx = 1\nz\nx = 1\n")
    many = client.edit(env.id, "dup.txt", "x = 1", "x = 9")
    assert not many.ok and "lines 1, 3, 5" in many.output
    assert not client.edit(env.id, "dup.txt", "not there", "a").ok
    same = client.edit(env.id, "dup.txt", "z", "z")
    assert not same.ok and "identical" in same.output
    assert not client.edit(env.id, "missing.txt", "a", "b").ok
    assert not client.edit(env.id, "tests", "a", "b").ok  # a directory
    assert client.shell(env.id, "cat dup.txt").output == "x = 1\ny = 2\nx = 1\nz\nx = 1\n"


def test_create_refuses_existing_files_and_missing_directories(client, env):
    made = client.create(env.id, "pkg_new/../made.txt", "hello\n")
    assert made.ok
    assert client.shell(env.id, "cat /repo/made.txt").output == "hello\n"
    again = client.create(env.id, "made.txt", "other")
    assert not again.ok and "exists" in again.output
    nodir = client.create(env.id, "no/such/dir/f.py", "x")
    assert not nodir.ok and "does not exist" in nodir.output
    assert client.shell(env.id, "cat made.txt; test -e no || echo absent").output == "hello\nabsent\n"


def test_tools_schemas_are_openai_function_definitions(client):
    tools = client.tools()
    assert [t["function"]["name"] for t in tools] == ["shell", "edit", "create", "submit"]
    for t in tools:
        assert t["type"] == "function"
        assert t["function"]["description"] and t["function"]["parameters"]["type"] == "object"
    assert tools[1]["function"]["parameters"]["required"] == ["path", "old", "new"]


def test_typed_errors(client, envserver, envtest_image, docker_client):
    with pytest.raises(UnknownEnv):
        client.shell("nosuchenv", "ls")
    with pytest.raises(ImageNotAllowed, match="not allowed"):
        client.create_env("busybox:latest")
    with pytest.raises(BadRequest, match="not present"):
        client.create_env("forager/does-not-exist:1")
    with pytest.raises(BadRequest):
        client.create_env(envtest_image, ttl=1)  # below the minimum
    import httpx

    auth = {"Authorization": f"Bearer {envserver.token}"}
    bad = httpx.post(envserver.url + "/envs/whatever/shell", json={"command": 5}, headers=auth)
    assert bad.status_code == 422 and bad.json() == {"error": "bad_request", "message": bad.json()["message"]}
    assert "command" in bad.json()["message"]
    sneaky = httpx.post(envserver.url + "/envs", json={"image": envtest_image, "privileged": True, "binds": ["/:/host"]},
                        headers=auth)
    assert sneaky.status_code == 422 and "binds, privileged" in sneaky.json()["message"]
    doomed = client.create_env(envtest_image, ttl=600)
    docker_client.containers.get(doomed.container_id).kill()
    with pytest.raises(EnvGone):
        for _ in range(50):  # the death event may land a moment after the kill returns
            client.shell(doomed.id, "echo still here?")
    assert client.get_env(doomed.id).status == "gone"
    client.delete_env(doomed.id)
    with pytest.raises(EnvGone):
        client.shell(doomed.id, "ls")


def test_openapi_and_metrics(client, envserver, env):
    import httpx

    spec = httpx.get(envserver.url + "/openapi.json").json()
    assert {"/envs", "/envs/{env_id}/shell", "/envs/{env_id}/submit", "/tools", "/healthz"} <= set(spec["paths"])
    assert httpx.get(envserver.url + "/docs").status_code == 200
    metrics = httpx.get(envserver.url + "/metrics", headers={"Authorization": f"Bearer {envserver.token}"}).text
    assert 'forager_step_seconds_count{tool="shell"}' in metrics and "forager_envs_live" in metrics
    assert 'forager_errors_total{error="unknown_env"}' in metrics


def test_async_client_and_concurrent_calls_on_one_env(envserver, envtest_image):
    import asyncio

    async def scenario():
        async with envserver.async_client() as c:
            env = await c.create_env(envtest_image, ttl=60)
            try:
                # concurrent calls on one env are serialised by the server: each gets its own output
                results = await asyncio.gather(*(c.shell(env.id, f"echo {i}; sleep 0.0{i}") for i in range(6)))
                assert [r.output for r in results] == [f"{i}\n" for i in range(6)]
                assert (await c.edit(env.id, "calc.py", "a + b", "b + a")).ok
                assert "b + a" in (await c.submit(env.id)).patch
            finally:
                await c.delete_env(env.id)
            with pytest.raises(UnknownEnv):
                await c.get_env("nope")

    asyncio.run(scenario())


def test_a_slow_command_in_one_env_does_not_hold_up_another(envserver, envtest_image):
    import asyncio

    async def scenario():
        async with envserver.async_client() as c:
            slow, quick = await asyncio.gather(c.create_env(envtest_image, ttl=60), c.create_env(envtest_image, ttl=60))
            finished: list[str] = []
            try:
                async def run_slow():
                    await c.shell(slow.id, "sleep 3; echo slow")
                    finished.append("slow")

                async def run_quick():
                    await asyncio.sleep(0.2)  # let the slow command start first
                    for i in range(5):
                        assert (await c.shell(quick.id, f"echo {i}")).output == f"{i}\n"
                        assert (await c.create(quick.id, f"note{i}.txt", "x")).ok  # file tools use Docker API calls
                    finished.append("quick")

                await asyncio.gather(run_slow(), run_quick())
            finally:
                await asyncio.gather(c.delete_env(slow.id), c.delete_env(quick.id))
            assert finished == ["quick", "slow"]

    asyncio.run(scenario())


def test_a_session_closed_under_a_waiting_call_is_a_dead_session_not_a_crash(envtest_image):
    """The env's container dies while a shell call waits its turn: the death handler closes the session, and
    the call must end as a dead session (the server answers env_gone), not an AttributeError (HTTP 500)."""
    import asyncio

    from envserver.docker_backend import Backend
    from tests.fixtures_envserver import labelled_container
    from envserver.session import BashSession, SessionDied

    async def run_after_close() -> None:
        backend = Backend()
        cid = labelled_container(backend, envtest_image)
        try:
            session = BashSession(backend, cid, "/repo")
            await session.start()
            assert (await session.run("echo ok", 30)).output.strip() == b"ok"
            await session.close()
            with pytest.raises(SessionDied, match="closed"):
                await session.run("echo still here?", 30)
        finally:
            backend.remove(cid)

    asyncio.run(run_after_close())
