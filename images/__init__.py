"""The image builder: repository lists → validated, layered Docker images → the catalog.

Stable Python API (other packages call these; keep the signatures):

    from images.sources import parse_list, parse_entry
    specs, errors = parse_list("examples/repos.txt")   # -> (list[RepoSpec], ["file:line: why", ...])
    spec = parse_entry("pypi:six==1.17.0")              # one entry -> RepoSpec (ValueError if malformed)

    from images.build import build_list, build_repo, BuildOptions
    records = build_list(specs, settings, jobs=2, force=False, progress=None)   # -> list[ImageRecord], in order
    record = build_repo(spec, settings)                                          # -> ImageRecord
    # options=BuildOptions(min_pass_rate=0.9, test_timeout=1200, runs=2, push="REGISTRY/PREFIX",
    #                      per_test_timeout=60, resolve_at="commit"|"today", make_base=True, install_host_packages=None)
    from images.history import expand_commits
    specs, notes = expand_commits(specs, settings.mirror_dir, 5)   # `--commits 5`: parents of test-touching commits
    # summary={} (build_list) is filled with counts: total, ok, cached, failed{class: n}, pushed, push_errors

    from images.catalog import load_catalog, ok_records, load_records
    load_catalog(settings.catalog_path)   # -> {tag: ImageRecord}, the last record per repo@commit wins
    ok_records(settings.catalog_path)     # -> [ImageRecord] with status "ok" (the env server's allow-list)
    load_records(settings.catalog_path)   # -> every outcome, failures included

Sources (images.sources): `owner/name[@ref]` (GitHub), a git URL or local path with `@ref`, or
`pypi:NAME==VERSION` (the sdist, committed as a one-commit repo with a deterministic SHA). Everything goes
through mirrors in $FORAGER_HOME/mirrors; a pinned ref already there is used without network.

Images (images.layers), each tag derived from a hash of its inputs so the same inputs never build twice:
  forager/base:pyX.Y (3.9 bullseye, 3.11 bookworm, 3.13 trixie; made on demand) → forager/tools:pyX.Y-uvV
  (the host's uv binary) → forager/deps-<name>:<hash12> (deps + pytest + pytest-timeout in /opt/venv, no repo
  code, resolved by uv as of the commit's month (--exclude-newer), with a compiler, headers and -dev
  libraries when the project compiles (images.toolchain, images.assemble); keyed by python + requirement
  lines + toolchain + date) → forager/repo-<name>:<hash12> (the repo at /repo, `pip install --no-deps -e .`,
  a fresh one-commit git repo; labels forager.repo, forager.commit, forager.kind=repo). Builds run on the
  bridge network, never the host's. `pip freeze` of the image is recorded in ImageRecord.pip_freeze.

Validation (images.validate): the test command runs twice in the image with network none, a per-test
timeout (pytest-timeout; tests it kills go to ImageRecord.timed_out_tests and count neither way) and a
whole-run timeout; outcomes come from JUnit XML only; tests whose outcome differs are flaky. `ok` needs
tests collected and passed/(passed+failed) >= min_pass_rate over non-skipped, non-flaky, non-timed-out tests.

Failure classes (ImageRecord.status): clone, detect, python_unavailable, toolchain, system_library,
resolution, install, collect, timeout, low_pass_rate, error (Docker itself failed); images.failures names
them from a build's log; ImageRecord.log_path keeps the full log.
"""
