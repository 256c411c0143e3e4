"""A persistent bash process inside a container, spoken to over the Engine API's exec attach socket.

One `exec_create` per session, not per command: each command is written to bash's stdin and its
merged output is read back until a sentinel line that only this command could print. The socket
is handed to asyncio, so reading never blocks the event loop (SWE-ReX issue 261) and a round trip
costs no Docker API call.

Killing the exec client kills nothing inside the container (moby 9098). bash, as an exec's process,
leads its own session and process group; a timeout kills that group (and any straggler still in the
session) with a separate exec, then starts a fresh bash in the last known working directory.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from envserver.docker_backend import Backend
from envserver.errors import BadRequest

# Commands reach bash inside $'...' so any text (quotes, newlines, here-docs, syntax errors) is
# parsed by `eval` as one unit: a broken command returns an error instead of swallowing the
# sentinel that follows it.
_QUOTE = {ord("\\"): "\\\\", ord("'"): "\\'", 0: ""}
_QUOTE.update({c: f"\\x{c:02x}" for c in range(1, 32)})
_QUOTE[127] = "\\x7f"

# Output kept in memory per command; past this the middle is dropped (the saved file says so).
MAX_KEPT = 64 * 1024 * 1024

INLINE_LIMIT = 16 * 1024  # characters of command sent down the socket; longer ones travel as a file

# PYTHONHASHSEED, TZ and LC_ALL make the same command print the same thing in every env (replay, docs/world.md):
# set iteration order, dates and sort order would otherwise vary from env to env.
SESSION_ENV = ["PAGER=cat", "GIT_PAGER=cat", "MANPAGER=cat", "TERM=dumb", "PIP_PROGRESS_BAR=off",
               "PYTHONHASHSEED=0", "TZ=UTC", "LC_ALL=C.UTF-8", "LANG=C.UTF-8"]

# Kills the session's process group, then anything else still in the session (a job that made its
# own group with `set -m`). Runs as a separate exec, as root.
_KILL = r"""
kill -9 -- -{pid} 2>/dev/null
for f in /proc/[0-9]*/stat; do
  read -r line < "$f" 2>/dev/null || continue
  set -- ${{line##*) }}
  [ "$4" = "{pid}" ] && kill -9 "${{f//[^0-9]/}}" 2>/dev/null
done
true
"""


# asyncio.timeout (3.11) cancels in place; wait_for would wrap every command in a new Task.
_deadline = getattr(asyncio, "timeout", None) or (lambda seconds: _WaitFor(seconds))


class _WaitFor:  # Python 3.10 fallback: same contract as asyncio.timeout, built on a timer handle
    def __init__(self, seconds: float):
        self.seconds, self.fired = seconds, False

    async def __aenter__(self):
        task = asyncio.current_task()
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self._fire, task)

    def _fire(self, task):
        self.fired = True
        task.cancel()

    async def __aexit__(self, exc_type, exc, tb):
        self.handle.cancel()
        if self.fired and exc_type is asyncio.CancelledError:
            raise TimeoutError
        return False


def quote(command: str) -> str:
    return "$'" + command.translate(_QUOTE) + "'"


@dataclass
class RunResult:
    output: bytes
    exit_code: int | None
    timed_out: bool = False
    dropped: int = 0  # bytes dropped from the middle because the command printed more than MAX_KEPT
    session_ended: bool = False  # bash exited (e.g. the command ran `exit`); a new session was started


class SessionDied(Exception):
    """bash's socket closed; the caller decides whether the container is gone."""


class Output:
    """Bytes read so far for one command: everything up to MAX_KEPT; past that, the first MAX_KEPT/2 bytes
    and a tail trimmed back to MAX_KEPT/2 whenever it passes MAX_KEPT (trimming in batches keeps it linear)."""

    def __init__(self, initial: bytes = b""):
        self.head = b""
        self.buf = bytearray(initial)
        self.dropped = 0
        self.shifted = 0  # bytes removed from the front of buf so far (moved to head, or dropped)

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_KEPT:
            if not self.head:
                self.head = bytes(self.buf[: MAX_KEPT // 2])
                del self.buf[: MAX_KEPT // 2]
                self.shifted += MAX_KEPT // 2
            extra = len(self.buf) - MAX_KEPT // 2
            if extra > 0:
                del self.buf[:extra]
                self.dropped += extra
                self.shifted += extra

    def text(self) -> bytes:
        if not self.head:
            return bytes(self.buf)
        return self.head + f"\n[... {self.dropped} bytes dropped here ...]\n".encode() + bytes(self.buf)


class BashSession:
    def __init__(self, backend: Backend, container_id: str, cwd: str, user: str | None = None,
                 env: list[str] | None = None):
        self.backend = backend
        self.env = SESSION_ENV if env is None else env
        self.container_id = container_id
        self.cwd = cwd
        self.user = user
        self.pid: int | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._exec_id: str | None = None
        self._pending = b""  # bytes read past the last sentinel (background jobs' output)
        self._clean = False  # False while a command is in flight or after an interrupted read
        self.exports = ""  # `export -p` as of the last sentinel: the shell's exported variables (state record, forks)

    async def start(self) -> None:
        try:
            exec_id, sock = await asyncio.to_thread(self.backend.attach_bash, self.container_id, self.user, self.env)
        except BadRequest as exc:  # Docker refused the exec: bash is gone from a running container
            raise SessionDied(f"bash could not start: {exc}") from exc
        self._exec_id = exec_id
        self._reader, self._writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        self._pending = b""
        # Not eval'd: `exec 2>&1` must outlive this line so stderr joins stdout for good.
        token = secrets.token_hex(8)
        # The cd is here, not in exec_create, so a deleted cwd cannot stop a restart.
        self._writer.write(f"exec 2>&1; cd {quote(self.cwd)} 2>/dev/null; {_sentinel(token, '$$')}\n".encode())
        out = Output()
        try:
            self.pid, self.cwd = await asyncio.wait_for(self._read_until(token, out), 60)
        except (SessionDied, asyncio.TimeoutError, TimeoutError) as exc:
            await self.close()
            raise SessionDied(f"bash did not start: {out.text()[-2000:].decode(errors='replace')} {exc}") from exc
        self._clean = True

    async def run(self, command: str, timeout: float) -> RunResult:
        """Run one command; merged output in order, its exit code, or timed_out with output so far."""
        if not self._clean:
            await self.restart()
        token = secrets.token_hex(8)
        if len(command) <= INLINE_LIMIT:
            line = f"builtin eval {quote(command)} </dev/null 2>&1; {_sentinel(token, '$?')}\n"
        else:
            # bash reads a pipe one byte per syscall; a long command (a big here-doc) goes in as a file instead.
            path = f"/tmp/forager-cmd-{token}"
            await asyncio.to_thread(self.backend.write_file, self.container_id, path, command.encode())
            line = f'builtin eval "$(< {path})" </dev/null 2>&1; {_sentinel(token, "$?")}; rm -f {path}\n'
        if self._writer is None:  # closed while this call waited (its env's container died): the caller says why
            raise SessionDied("the shell session was closed")
        out = Output(self._pending)
        self._pending = b""
        self._clean = False
        try:
            self._writer.write(line.encode())
            async with _deadline(timeout):
                code, cwd = await self._read_until(token, out)
        except TimeoutError:
            await self.restart()
            return RunResult(out.text(), None, timed_out=True, dropped=out.dropped)
        except SessionDied:
            code = await asyncio.to_thread(self.backend.exec_exit_code, self._exec_id)
            await self.restart()  # raises if the container itself is gone
            return RunResult(out.text(), code, dropped=out.dropped, session_ended=True)
        self.cwd = cwd
        self._clean = True
        return RunResult(out.text(), code, dropped=out.dropped)

    async def _read_until(self, token: str, out: Output) -> tuple[int, str]:
        marker = f"\n__FORAGER_{token}__ ".encode()
        end_marker = f"__FORAGER_{token}_END__\n".encode()
        # Only the newest bytes can hold the marker and its status line (exit code and a cwd up to PATH_MAX),
        # so each search is bounded, and stays valid when Output drops old bytes from the front.
        window = len(marker) + 4200
        reader = self._reader
        found = None  # where the marker was found, counted from the start of all output (Output drops from the front)
        try:
            while True:
                header = await reader.readexactly(8)
                data = await reader.readexactly(int.from_bytes(header[4:8], "big"))
                out.add(data)
                buf = out.buf
                idx = found - out.shifted if found is not None else -1
                if idx < 0 or buf[idx : idx + len(marker)] != marker:
                    idx = buf.find(marker, max(0, len(buf) - len(data) - window))
                if idx < 0:
                    continue
                found = idx + out.shifted
                end = buf.find(b"\n", idx + len(marker))
                if end < 0:
                    continue  # the status line is still arriving
                tail = buf.find(end_marker, end)
                if tail < 0:
                    continue  # the exported variables are still arriving
                code_s, _, cwd = bytes(buf[idx + len(marker) : end]).decode(errors="replace").partition(" ")
                self.exports = bytes(buf[end + 1 : tail]).decode(errors="replace")
                self._pending = bytes(buf[tail + len(end_marker) :])
                del buf[idx:]
                _drop_trace_of_sentinel(buf, token)
                return int(code_s), cwd
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            raise SessionDied(str(exc)) from exc

    async def restart(self) -> None:
        """Kill whatever the session runs, inside the container, and start a fresh bash in the same cwd."""
        await self.kill()
        await self.start()

    async def kill(self) -> None:
        self._clean = False
        if self.pid:
            try:
                await asyncio.to_thread(self.backend.run_script, self.container_id, _KILL.format(pid=self.pid), 30, "root")
            except BadRequest:
                pass  # no bash left to kill with (the agent removed it): start() below says the env is broken
            self.pid = None
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _sentinel(token: str, code: str) -> str:
    # The token is split across two printf arguments so `set -x` tracing never prints the marker; `builtin`
    # so an agent's function named printf (or eval, above) cannot swallow it. `export -p` after the status
    # line gives the exported variables at no extra round trip (and no fork: both are builtins).
    return (f"builtin printf '\\n__FORAGER_%s__ %d %s\\n' {token} \"{code}\" \"$PWD\"; builtin export -p; "
            f"builtin printf '__FORAGER_%s_END__\\n' {token}")


def _drop_trace_of_sentinel(buf: bytearray, token: str) -> None:
    """Under `set -x` bash traces our printf too: that line is ours, not the command's output."""
    start = buf.rfind(b"\n", 0, max(0, len(buf) - 1)) + 1
    last = bytes(buf[start:])
    if b"__FORAGER_%s__" in last and token.encode() in last:
        del buf[start:]
