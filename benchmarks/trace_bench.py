"""Tracer cost: frames recorded per second, and how much slower a test suite runs under the tracer.

    .venv/bin/python benchmarks/trace_bench.py [--repeat 3] [--image TAG]

1. frames/s: a pure-Python workload (sorting, recursion, generators, exceptions) traced in-process;
   its untraced run in the same process is the baseline (ratio = traced / plain time).
2. test slowdown: a generated project's pytest suite run with `-p forager_tracer` (first 3 calls per
   function traced, as in collection) vs the same suite without it, best of --repeat runs each.
3. with --image: the same comparison for an image's test command inside a container.
Ends with one JSON line holding every figure printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forager.trace import tracer as T  # noqa: E402

WORKLOAD = '''\
def bubble(items):
    items = list(items)
    for i in range(len(items)):
        for j in range(len(items) - 1 - i):
            if items[j] > items[j + 1]:
                items[j], items[j + 1] = items[j + 1], items[j]
    return items


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def primes(limit):
    sieve = [True] * (limit + 1)
    for p in range(2, int(limit ** 0.5) + 1):
        if sieve[p]:
            for k in range(p * p, limit + 1, p):
                sieve[k] = False
    return [p for p in range(2, limit + 1) if sieve[p]]


def words(text):
    for word in text.split():
        yield word.strip(".,").lower()


def parse_all(values):
    out = []
    for v in values:
        try:
            out.append(int(v))
        except ValueError:
            out.append(None)
    return out


def workload(scale):
    a = bubble(range(scale, 0, -1))
    b = fib(12)
    c = primes(scale * 10)
    d = sorted(set(words("The quick brown fox, the lazy dog. " * scale)))
    e = parse_all(["1", "x", "3"] * scale)
    return len(a), b, len(c), d[:3], e[:3]
'''

TESTS = '''\
from benchpkg.work import bubble, fib, primes, parse_all, words, workload


def test_workload():
    for _ in range(20):
        assert workload(40)[1] == 144


def test_bubble():
    for n in range(60):
        assert bubble(range(n, 0, -1)) == list(range(1, n + 1))


def test_fib():
    assert [fib(n) for n in range(18)][-1] == 1597


def test_primes_and_words():
    for _ in range(30):
        assert primes(500)[:3] == [2, 3, 5]
        assert list(words("A b. C,"))== ["a", "b", "c"]
        assert parse_all(["7", "y"]) == [7, None]
'''


def make_project(root: Path) -> Path:
    (root / "benchpkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "benchpkg" / "__init__.py").write_text("")
    (root / "benchpkg" / "work.py").write_text(WORKLOAD)
    (root / "tests" / "test_work.py").write_text(TESTS)
    plugin = root / "_plugin"
    plugin.mkdir()
    shutil.copy(T.__file__, plugin / "forager_tracer.py")
    return root


def frames_per_second(root: Path, repeat: int) -> dict:
    sys.path.insert(0, str(root))
    from benchpkg import work  # noqa: PLC0415

    plain = min(_timed(lambda: work.workload(60)) for _ in range(repeat))
    best, frames = None, 0
    for _ in range(repeat):
        tracer = T.Tracer([str(root)], max_events=10**7, max_bytes=10**10)
        started = time.perf_counter()
        _, _, traces = tracer.trace_call(work.workload, (60,))
        took = time.perf_counter() - started
        tracer.close()
        frames = len(traces[0]["frames"])
        best = took if best is None else min(best, took)
    return {"frames": frames, "traced_s": round(best, 4), "plain_s": round(plain, 5),
            "frames_per_s": round(frames / best), "workload_slowdown": round(best / plain, 1)}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def suite_slowdown(root: Path, repeat: int) -> dict:
    out = root / "_out"
    env = {**os.environ, "PYTHONPATH": f"{root / '_plugin'}:{root}", "FORAGER_TRACE_OUT": str(out),
           "FORAGER_TRACE_ROOT": str(root)}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]

    def run(extra: list[str]) -> float:
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run(base + extra, cwd=root, env=env, check=True, capture_output=True)
        return time.perf_counter() - started

    plain = min(run([]) for _ in range(repeat))
    traced = min(run(["-p", "forager_tracer"]) for _ in range(repeat))
    traces = sum(1 for f in out.glob("*.jsonl") for _ in f.open())
    return {"plain_s": round(plain, 3), "traced_s": round(traced, 3), "slowdown": round(traced / plain, 2),
            "traces": traces}


def image_slowdown(tag: str, repeat: int) -> dict:
    import docker

    from forager.trace.collect import OUT_DIR, _box, _env_args, _jsonl_lines, _prepare, _with_tracer_path

    labels = docker.from_env(timeout=600).images.get(tag).labels
    command = "python -m pytest -q -p no:cacheprovider"
    env = _env_args({"out": OUT_DIR, "root": "/repo", "safe_repr": "1"})  # as collection runs it
    with _box(tag, "/repo", None) as box:
        _prepare(box)

        def run(extra: str) -> float:
            started = time.perf_counter()
            box.run(_with_tracer_path(f"rm -rf {OUT_DIR}/*; {command} {extra}"), 1800, env=env)
            return time.perf_counter() - started

        plain = min(run("") for _ in range(repeat))
        traced = min(run("-p forager_tracer") for _ in range(repeat))
        traces = sum(1 for _ in _jsonl_lines(box, OUT_DIR))
    return {"image": tag, "repo": labels.get("forager.repo"), "plain_s": round(plain, 2),
            "traced_s": round(traced, 2), "slowdown": round(traced / plain, 2), "traces": traces}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--image", help="also measure this repository image's suite in a container")
    args = parser.parse_args()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp) / "proj")
        fps = frames_per_second(root, args.repeat)
        print(f"in-process: {fps['frames']} frames in {fps['traced_s']}s -> {fps['frames_per_s']} frames/s; "
              f"workload {fps['workload_slowdown']}x slower than untraced ({fps['plain_s']}s)")
        figures["in_process"] = fps
        suite = suite_slowdown(root, args.repeat)
        print(f"pytest suite: {suite['traced_s']}s traced vs {suite['plain_s']}s plain -> "
              f"{suite['slowdown']}x slowdown ({suite['traces']} traces)")
        figures["suite"] = suite
    if args.image:
        image = image_slowdown(args.image, args.repeat)
        print(f"image {image['image']}: {image['traced_s']}s traced vs {image['plain_s']}s plain -> "
              f"{image['slowdown']}x slowdown ({image['traces']} traces)")
        figures["image"] = image
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
