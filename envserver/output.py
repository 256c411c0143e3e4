"""What a detached run leaves: its output capped to a head and a tail, and its exit code."""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_CAP = 1 << 20  # bytes of a detached run's output kept (head and tail) by default
KILLED = 137  # 128 + SIGKILL: what `timeout -s KILL` (and the OOM killer) leave as exit status


class CappedOutput:
    """Bytes of a run's output: all of them up to `cap`; past that, the first half and the last half."""

    def __init__(self, cap: int):
        self.cap, self.head, self.tail, self.dropped = cap, bytearray(), bytearray(), 0

    def add(self, data: bytes) -> None:
        room = self.cap // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        extra = len(self.tail) - (self.cap - self.cap // 2)
        if extra > 0:
            del self.tail[:extra]
            self.dropped += extra

    def bytes(self) -> bytes:
        if not self.dropped:
            return bytes(self.head + self.tail)
        return bytes(self.head) + f"\n[... {self.dropped} bytes of output omitted ...]\n".encode() + bytes(self.tail)


@dataclass
class RunResult:
    """A detached run: exit code (None when killed at its deadline), merged output (head and tail kept)."""

    exit_code: int | None
    output: bytes
    timed_out: bool = False
    truncated: bool = False
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")
