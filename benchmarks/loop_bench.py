"""What one loop for two drivers costs the blocking path: the episode loop before issue 21 (read from git) against
today's `run_episode` (the generator driven by blocking calls) and `arun_episode` (driven in an event loop), on
the same episodes against the scripted env server in memory, so only the loop's own machinery is timed.

The figure is microseconds per step and the ratio to the old loop; for scale, a real shell step through the
env server is ~2-3 ms and a model turn seconds (benchmarks/envserver_bench.py, fleet_bench.py).

    python benchmarks/loop_bench.py [--episodes 200] [--steps 30] [--rounds 5] [--before 6566e32]

The last line printed is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forager.episodes import loop  # noqa: E402
from forager.episodes.policies import Decision  # noqa: E402
from forager.models import Action, PolicyInfo  # noqa: E402
from tests.fixtures_loop import ScriptedEnvServer  # noqa: E402
from tests.test_episode_loop import TASK  # noqa: E402


class Shells:
    """A policy that always runs `ls` (no I/O of its own)."""

    info = PolicyInfo(name="bench")

    def next_action(self, episode):
        return Decision(Action(tool="shell", arguments={"command": "ls"}))


def old_loop(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:forager/episodes/loop.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "loop_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("loop_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_step_us(run, episodes: int, steps: int, rounds: int) -> float:
    """The best of `rounds` (the least disturbed by other load) of the mean time per step."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(episodes):
            traj = run(TASK, Shells(), ScriptedEnvServer(), max_turns=steps)
            assert len(traj.steps) == steps
        best = min(best, (time.perf_counter() - started) / (episodes * steps))
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", default="6566e32", help="the commit whose loop is the baseline")
    args = ap.parse_args()
    before = old_loop(args.before)
    figures = {"loadavg_1m_start": round(os.getloadavg()[0], 2), "steps": args.steps, "episodes": args.episodes}
    # interleaved, so a change of load hits all three alike
    runs = {"before_us": before.run_episode, "sync_us": loop.run_episode,
            "async_us": lambda *a, **k: asyncio.run(loop.arun_episode(*a, **k))}
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = min(best[name], per_step_us(run, args.episodes // args.rounds or 1, args.steps, 1))
    figures.update({k: round(v, 1) for k, v in best.items()})
    figures["sync_vs_before"] = round(best["sync_us"] / best["before_us"], 2)
    figures["async_vs_before"] = round(best["async_us"] / best["before_us"], 2)
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(f"per step: the loop before {figures['before_us']} us; run_episode now {figures['sync_us']} us "
          f"({figures['sync_vs_before']}x); arun_episode under asyncio.run {figures['async_us']} us "
          f"({figures['async_vs_before']}x); load {figures['loadavg_1m_end']}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
