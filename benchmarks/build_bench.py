"""Builder benchmark on a repository list (default: examples/repos.txt).

Measures, in one run:
  1. a cold build of the whole list (fresh FORAGER_HOME, no Docker layer cache): the share of repos that
     end `ok`, and per repo the build time, tests passed/collected, test time and image size;
  2. the rebuild of one repo at a new commit with its dependency layer cached, against a cold rebuild of
     the same commit (the ratio; target >= 5x).

Usage: python benchmarks/build_bench.py [--list FILE] [-j N] [--repo NAME] [--home DIR]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", default=str(ROOT / "examples" / "repos.txt"))
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--repo", help="repo for the rebuild measurement (default: the first ok one)")
    parser.add_argument("--home", help="FORAGER_HOME to use (default: a fresh temporary one)")
    args = parser.parse_args()

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="forager-bench-"))
    settings = Settings(home=home)
    specs, errors = parse_list(args.list)
    for e in errors:
        console.print(f"[yellow]malformed: {e}")

    started = time.monotonic()
    with progress() as bar:
        records = build_list(specs, settings, jobs=args.jobs, progress=bar, options=COLD)
    wall = time.monotonic() - started

    print(f"\nCold build of {args.list} with -j {args.jobs} (fresh home {home}, no layer cache): {wall:.0f}s wall")
    print(f"{'repo':16} {'status':14} {'passed/collected':>17} {'build s':>8} {'test s':>7} {'size MB':>8}  reason")
    per_repo = []
    for r in records:
        size_mb = round(r.size_bytes / 2**20) if r.size_bytes else None
        test_s = round(r.test_seconds, 1) if r.test_seconds else None
        print(f"{r.repo:16} {r.status:14} {f'{r.tests_passed}/{r.tests_collected}':>17} {r.build_seconds:8.1f} {str(test_s):>7} {str(size_mb):>8}  {'' if r.status == 'ok' else r.reason[:90]}")
        per_repo.append(
            dict(repo=r.repo, status=r.status, passed=r.tests_passed, collected=r.tests_collected, build_seconds=r.build_seconds,
                 test_seconds=test_s, size_mb=size_mb, reason=r.reason if r.status != "ok" else "")
        )
    ok = [r for r in records if r.status == "ok"]
    ok_share = len(ok) / len(records) if records else 0.0
    cold_times = [r.build_seconds for r in records if r.tag]
    print(f"ok: {len(ok)}/{len(records)} = {ok_share:.0%}; cold build per repo: median {statistics.median(cold_times):.1f}s, "
          f"mean {statistics.mean(cold_times):.1f}s" if cold_times else "no image was built")

    figures = dict(list=str(args.list), jobs=args.jobs, repos=len(records), ok=len(ok), ok_share=round(ok_share, 3),
                   cold_wall_seconds=round(wall, 1),
                   cold_build_median_seconds=round(statistics.median(cold_times), 1) if cold_times else None,
                   cold_build_mean_seconds=round(statistics.mean(cold_times), 1) if cold_times else None,
                   per_repo=per_repo)

    target = next((s for s in specs if s.name == args.repo), None) if args.repo else None
    target = target or next((s for s, r in zip(specs, records) if r.status == "ok"), None)
    if target is None:
        print("no ok repo to measure a rebuild with")
    else:
        with tempfile.TemporaryDirectory(prefix="forager-bench-commit-") as tmp:
            clone = new_commit_of(target, settings, Path(tmp))
            spec = parse_entry(str(clone))
            warm = build_repo(spec, settings)  # dependency layer already built by the cold run
            reused = "deps layer reused" in Path(warm.log_path).read_text()
            cold = build_repo(spec, settings, COLD)
        ratio = cold.build_seconds / warm.build_seconds if warm.build_seconds else None
        print(f"\nRebuild of {target.name} at a new commit: deps layer cached {warm.build_seconds:.1f}s (reused={reused}, {warm.status}) "
              f"vs cold {cold.build_seconds:.1f}s ({cold.status}): {ratio:.1f}x (target >= 5x)")
        figures.update(rebuild_repo=target.name, rebuild_cached_seconds=warm.build_seconds, rebuild_cold_seconds=cold.build_seconds,
                       rebuild_ratio=round(ratio, 2) if ratio else None, rebuild_deps_reused=reused,
                       rebuild_statuses=[warm.status, cold.status])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
