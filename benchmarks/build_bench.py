"""Builder benchmark on a baseline repository list (default: examples/repos.txt) and, optionally, more lists.

Measures, in one run:
  1. a cold build of the baseline list (fresh FORAGER_HOME, no Docker layer cache): the share of repos that
     end `ok`, and per repo the build time, tests passed/collected, test time and image size;
  2. the same for each list given with --lists (e.g. benchmarks/lists/compiled.txt, historical.txt), with
     ratios of its median build time and image size to the baseline's, measured in this same run;
  3. the rebuild of one baseline repo at a new commit with its dependency layer cached, against a cold
     rebuild of the same commit (the ratio; target >= 5x).

Usage: python benchmarks/build_bench.py [--list FILE] [--lists FILE ...] [-j N] [--repo NAME] [--home DIR]
The last line printed is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forager.config import Settings  # noqa: E402
from forager.cli.ui import console, progress  # noqa: E402
from images.build import BuildOptions, build_list, build_repo  # noqa: E402
from images.sources import mirror_path, parse_entry, parse_list  # noqa: E402

COLD = BuildOptions(force=True, no_cache=True)


def new_commit_of(spec, settings: Settings, workdir: Path) -> Path:
    """A local clone of the repo's mirror with one extra commit (a docs change: deps unchanged)."""
    clone = workdir / spec.name
    subprocess.run(["git", "clone", "-q", str(mirror_path(spec, settings.mirror_dir)), str(clone)], check=True)
    (clone / "FORAGER_BENCH.md").write_text(f"benchmark commit {time.time()}\n")
    env = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", *env, "add", "-A"], cwd=clone, check=True)
    subprocess.run(["git", *env, "commit", "-q", "-m", "bench: new commit"], cwd=clone, check=True)
    return clone


def build_cold(path: str, settings: Settings, jobs: int) -> tuple[list, float]:
    specs, errors = parse_list(path)
    for e in errors:
        console.print(f"[yellow]malformed: {e}")
    started = time.monotonic()
    with progress() as bar:
        records = build_list(specs, settings, jobs=jobs, progress=bar, options=COLD)
    return records, time.monotonic() - started


def report(path: str, records, wall: float, jobs: int, home: Path) -> dict:
    """Print the list's table; return its figures."""
    print(f"\nCold build of {path} with -j {jobs} (home {home}, no layer cache): {wall:.0f}s wall")
    print(f"{'repo':16} {'commit':10} {'date':10} {'py':5} {'status':15} {'passed/coll':>11} {'t/o':>3} {'build s':>8} "
          f"{'test s':>7} {'size MB':>8}  reason")
    per_repo = []
    for r in records:
        size_mb = round(r.size_bytes / 2**20) if r.size_bytes else None
        test_s = round(r.test_seconds, 1) if r.test_seconds else None
        day = time.strftime("%Y-%m-%d", time.gmtime(r.commit_date)) if r.commit_date else "-"
        print(f"{r.repo:16} {(r.commit or '-')[:10]:10} {day:10} {r.python or '-':5} {r.status:15} "
              f"{f'{r.tests_passed}/{r.tests_collected}':>11} {len(r.timed_out_tests):>3} {r.build_seconds:8.1f} {str(test_s):>7} "
              f"{str(size_mb):>8}  {'' if r.status == 'ok' else r.reason[:110]}")
        per_repo.append(dict(repo=r.repo, commit=r.commit, commit_date=day, python=r.python, status=r.status,
                             passed=r.tests_passed, collected=r.tests_collected, timed_out=len(r.timed_out_tests),
                             build_seconds=r.build_seconds, test_seconds=test_s, size_mb=size_mb,
                             reason=r.reason if r.status != "ok" else ""))
    ok = [r for r in records if r.status == "ok"]
    times = [r.build_seconds for r in records if r.tag]
    sizes = [r.size_bytes / 2**20 for r in records if r.size_bytes]
    share = len(ok) / len(records) if records else 0.0
    print(f"ok: {len(ok)}/{len(records)} = {share:.0%}; build per repo: median {statistics.median(times):.1f}s, "
          f"mean {statistics.mean(times):.1f}s; image size median {statistics.median(sizes):.0f} MB"
          if times else f"ok: {len(ok)}/{len(records)}; no image was built")
    return dict(list=str(path), repos=len(records), ok=len(ok), ok_share=round(share, 3), cold_wall_seconds=round(wall, 1),
                cold_build_median_seconds=round(statistics.median(times), 1) if times else None,
                cold_build_mean_seconds=round(statistics.mean(times), 1) if times else None,
                size_median_mb=round(statistics.median(sizes)) if sizes else None,
                failed={s: sum(r.status == s for r in records) for s in sorted({r.status for r in records} - {"ok"})},
                per_repo=per_repo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", default=str(ROOT / "examples" / "repos.txt"), help="the baseline list")
    parser.add_argument("--lists", nargs="*", default=[], help="more lists, measured against the baseline")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--repo", help="repo for the rebuild measurement (default: the first ok one)")
    parser.add_argument("--home", help="FORAGER_HOME to use (default: a fresh temporary one)")
    args = parser.parse_args()

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="forager-bench-"))
    settings = Settings(home=home)
    specs, _ = parse_list(args.list)
    records, wall = build_cold(args.list, settings, args.jobs)
    figures = report(args.list, records, wall, args.jobs, home)
    figures["jobs"] = args.jobs
    figures["lists"] = []
    for path in args.lists:
        extra_records, extra_wall = build_cold(path, settings, args.jobs)
        extra = report(path, extra_records, extra_wall, args.jobs, home)
        for name, key in (("build_median_ratio", "cold_build_median_seconds"), ("size_median_ratio", "size_median_mb")):
            extra[name] = round(extra[key] / figures[key], 2) if extra[key] and figures[key] else None
        print(f"against the baseline {args.list}: median build time x{extra['build_median_ratio']}, "
              f"median image size x{extra['size_median_ratio']}")
        figures["lists"].append(extra)

    target = next((s for s in specs if s.name == args.repo), None) if args.repo else None
    target = target or next((s for s, r in zip(specs, records) if r.status == "ok"), None)
    if target is None:
        print("no ok repo to measure a rebuild with")
    else:
        with tempfile.TemporaryDirectory(prefix="forager-bench-commit-") as tmp:
            clone = new_commit_of(target, settings, Path(tmp))
            spec = parse_entry(str(clone))
            # The baseline's sdists resolve as of today (their commits carry no real date); the new commit is
            # built the same way so that its dependency layer can be the one the cold run built.
            warm = build_repo(spec, settings, BuildOptions(resolve_at="today"))
            reused = "deps layer reused" in Path(warm.log_path).read_text()
            cold = build_repo(spec, settings, BuildOptions(force=True, no_cache=True, resolve_at="today"))
        ratio = cold.build_seconds / warm.build_seconds if warm.build_seconds else None
        print(f"\nRebuild of {target.name} at a new commit: deps layer cached {warm.build_seconds:.1f}s (reused={reused}, {warm.status}) "
              f"vs cold {cold.build_seconds:.1f}s ({cold.status}): {ratio:.1f}x (target >= 5x)")
        figures.update(rebuild_repo=target.name, rebuild_cached_seconds=warm.build_seconds, rebuild_cold_seconds=cold.build_seconds,
                       rebuild_ratio=round(ratio, 2) if ratio else None, rebuild_deps_reused=reused,
                       rebuild_statuses=[warm.status, cold.status])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
