"""An env cannot hurt the server or give the answer away, and an agent's destructive commands end as results.

Real server, real containers: huge files, processes that outlive their command, kill -9 -1, a wiped /tmp,
shadowed builtins, a removed shell, mtimes and traces of the original code.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from envserver.errors import BadRequest
from envserver.models import Limits
from forager.episodes.loop import run_episode
from forager.models import Action, PolicyInfo, Task
from forager.episodes.policies import Decision
from tests.fixtures_grading import CALC_SPEC
from tests.test_envserver_grading import ADD, MUTATION, SUB

SPEC = CALC_SPEC


@pytest.fixture
def client(env_client):
    return env_client


@pytest.fixture
def env(calc_env):
    return calc_env


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_every_file_has_the_same_mtime_after_the_setup_patch(client, env):
    out = client.shell(env.id, "find . -newer tests/test_calc.py | head; find . ! -newer calc.py -newer tests | head;"
                               " stat -c %Y calc.py tests/test_calc.py .git/HEAD | sort -u")
    assert out.output.strip() == "946684800", out.output


def test_no_trace_of_the_original_code_in_the_container(client, env):
    # the line the setup patch removed must appear nowhere an agent can read: repo, git objects, caches, tmp
    original = r"def add\(a, b\):\n    return a \+ b"  # the function as it was before the setup patch
    probe = (f"grep -rlzP '{original}' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null | head; "
             f"git cat-file --batch-all-objects --batch | grep -czP '{original}'")
    out = client.shell(env.id, probe, timeout=120).output.split()
    assert out == ["0"], out


def test_a_huge_sparse_file_is_refused_by_edit_without_reading_it(client, env, envserver):
    assert client.shell(env.id, "truncate -s 4G big.txt && echo x > small.txt").exit_code == 0
    before = rss_kb(envserver.proc.pid)
    refused = client.edit(env.id, "big.txt", "a", "b")
    assert not refused.ok and "over the" in refused.output and "shell" in refused.output
    assert not client.create(env.id, "huge.txt", "x" * (5 * 1024 * 1024)).ok
    graded = client.submit(env.id)  # the 4 GB file is in the tree: over the patch cap, graded 0 unread
    assert graded.reward == 0.0 and "patch cap" in graded.grading_error
    assert rss_kb(envserver.proc.pid) - before < 200 * 1024  # kB: the server never held the file
    assert client.edit(env.id, "small.txt", "x", "y").ok


def test_binary_files_are_refused_by_edit(client, env):
    client.shell(env.id, "printf 'a\\x00b' > blob.bin")
    refused = client.edit(env.id, "blob.bin", "a", "c")
    assert not refused.ok and "binary" in refused.output


def test_a_process_holding_stdout_never_makes_a_call_wait(client, env):
    started = time.monotonic()
    r = client.shell(env.id, "setsid sleep 10000 &", timeout=30)
    assert r.exit_code == 0 and not r.timed_out
    submitted = client.submit(env.id)
    assert submitted.graded and submitted.reward == 0.0
    # far under the shell's 30 s deadline and the grading timeout: nothing waited for the sleeper
    assert time.monotonic() - started < 30


def test_the_env_survives_kill_9_minus_1_a_wiped_tmp_and_shadowed_builtins(client, env):
    client.shell(env.id, "sleep 1000 &")
    killed = client.shell(env.id, "kill -9 -1; sleep 0.2; jobs -r | wc -l")  # kills all but pid 1 and itself
    assert killed.output.endswith("Killed                  sleep 1000\n0\n") and not killed.timed_out
    assert client.shell(env.id, "echo alive").output == "alive\n"
    assert client.shell(env.id, "rm -rf /tmp && echo wiped").output == "wiped\n"
    long = client.shell(env.id, "echo " + "y" * 20000 + " | wc -c")  # long commands travel through /tmp
    assert long.output == "20001\n"
    client.shell(env.id, "printf() { :; }; eval() { :; }")
    assert client.shell(env.id, "echo still here", timeout=10).output == "still here\n"
    assert client.submit(env.id).graded


def test_ceilings_on_what_one_env_may_ask_for(client, envtest_image):
    with pytest.raises(BadRequest, match="ceilings: memory_mb"):
        client.create_env(envtest_image, limits=Limits(memory_mb=262144))
    with pytest.raises(BadRequest, match="ceilings: pids 65536 > 4096"):
        client.create_env(envtest_image, limits=Limits(pids=65536))


class Scripted:
    def __init__(self, *commands):
        self.info = PolicyInfo(name="scripted")
        self.commands = list(commands)

    def next_action(self, episode):
        if not self.commands:
            return Decision(Action(tool="submit"))
        return Decision(Action(tool="shell", arguments={"command": self.commands.pop(0)}))


TASK = Task(id="calc__attack", kind="mutate-fix", repo="calc", image="forager/envtest:latest", commit="c",
            problem_statement="add() subtracts", test_command=SPEC.test_command, test_files=SPEC.test_files,
            fail_to_pass=[ADD], pass_to_pass=[SUB], setup_patch=MUTATION)


def test_kill_9_minus_1_keeps_the_trajectory_and_the_episode_goes_on(client, envtest_image):
    traj = run_episode(TASK, Scripted("kill -9 -1", "echo after"), client, raise_infra=True)
    assert traj.exit_reason == "submitted" and traj.steps[1].observation.output == "after\n"


def test_an_agent_that_removes_its_shell_ends_env_broken_and_keeps_the_trajectory(client, envtest_image):
    traj = run_episode(TASK, Scripted("rm -f /bin/bash /usr/bin/bash; exit", "echo never"), client, raise_infra=True)
    assert traj.exit_reason == "env_broken" and len(traj.steps) == 1
    assert traj.steps[0].observation.flags == {"env_broken": True} and "shell" in traj.error


def test_a_disk_quota_holds_inside_the_env(client, envtest_image):
    health = client.health()
    assert health["disk_quota"], ("this Docker cannot give containers a disk quota: `forager setup` starts Docker on "
                                  "a btrfs data root when it starts Docker itself (docs/security.md)")
    env = client.create_env(envtest_image, ttl=300, limits=Limits(disk_mb=256))
    envs = [env]
    try:
        envs += client.fork(env.id)  # a fork's layer is a snapshot of the env's: its quota must hold as well
        for each in envs:
            # a reservation past the limit fails; buffered writes are counted only while btrfs accounting is
            # exact (forager/cli/quota.py, docs/security.md: a known gap), so they are not asserted here
            r = client.shell(each.id, "fallocate -l 500G /big; echo rc=$?", timeout=120)
            assert "rc=1" in r.output and "quota exceeded" in r.output.lower(), r.output
            assert client.shell(each.id, "echo still works").output == "still works\n"
    finally:
        for each in envs:
            client.delete_env(each.id)



NESTED_SUBVOLUME = """python3 - <<'EOF'
import fcntl, os, struct
fd = os.open(".", os.O_RDONLY)
for request in (0x5000940E, 0x1_5000940E, 0x50009418):  # BTRFS_IOC_SUBVOL_CREATE, its 64-bit alias, _V2
    try:
        fcntl.ioctl(fd, request, bytearray(struct.pack("q4088s", 0, b"escape")), True)
        print("created")
    except OSError as exc:
        print("refused", exc.errno)
EOF
fallocate -l 2G escape/big 2>/dev/null; echo fallocate=$?; unshare -U true 2>/dev/null; echo unshare=$?"""


def test_a_nested_subvolume_cannot_carry_writes_past_the_disk_quota(client, envtest_image):
    # On btrfs, root could create a subvolume with one ioctl and no capability; its data is outside the
    # container's qgroup (2 GB written past a 600 MB quota before the seccomp profile). Also no namespaces.
    env = client.create_env(envtest_image, ttl=300, limits=Limits(disk_mb=256))
    try:
        out = client.shell(env.id, NESTED_SUBVOLUME, timeout=120).output
        assert out.split("\n") == ["refused 1"] * 3 + ["fallocate=1", "unshare=1", ""], out
        assert client.shell(env.id, "python3 -c 'import threading; threading.Thread(target=print).start()'"
                                    " && git status --short | wc -l").output == "\n0\n"
    finally:
        client.delete_env(env.id)

LOOPBACK_PROBE = """python3 - <<'EOF'
import socket
print(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]),
      len(open("/proc/net/route").read().splitlines()) - 1)
print(sorted({info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}))
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen()
    client = socket.create_connection((host, server.getsockname()[1]), timeout=5)
    client.sendall(b"ping")
    print(server.accept()[0].recv(4).decode(), end=" ")
EOF"""


def test_an_env_has_loopback_only_and_localhost_works_on_ipv4_and_ipv6(client, env):
    # No interface but lo and no route out; yet "localhost" resolves and serves on both families, as a test
    # suite that starts a server on localhost needs (Docker's network-disabled mode left /etc/hosts empty,
    # and its IPv6-off default made ::1, which /etc/hosts names localhost, unbindable).
    out = client.shell(env.id, LOOPBACK_PROBE, timeout=60)
    assert out.output.split("\n") == ["['lo'] 0", "['127.0.0.1', '::1']", "ping ping "], out.output
