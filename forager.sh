#!/usr/bin/env bash
# One entry point for a fresh machine: set everything up, then run the main job or the tests.
#
#   ./forager.sh run  [forager run options]   set up, then build images, synthesize tasks, collect trajectories
#   ./forager.sh test [pytest options]        set up, then run the test suite
#
# Set-up is idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${FORAGER_VENV:-.venv}
PY=${PYTHON:-python3}

say() { printf '\033[1;36m[forager.sh]\033[0m %s\n' "$*" >&2; }

ensure_venv() {
    # A venv whose interpreter no longer runs (moved, Python upgraded) is made again.
    if [ -e "$VENV" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
        say "recreating broken virtualenv $VENV"; rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PY" -m venv "$VENV" 2>/dev/null; then
            # Debian's python3 ships venv separately.
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                say "installing python3-venv"
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
                rm -rf "$VENV"; "$PY" -m venv "$VENV"
            else
                say "cannot create a virtualenv: install python3-venv (Debian/Ubuntu) and retry"; exit 1
            fi
        fi
        say "created virtualenv $VENV"
    fi
    # Reinstall only when the project's metadata changed since the last install.
    local stamp="$VENV/.forager-installed" want
    want=$(cat pyproject.toml | sha256sum | cut -c1-16)-$1
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing forager into $VENV"
        "$VENV/bin/pip" install -q -e ".[$1]"
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-run}; shift || true
case "$cmd" in
    run)
        ensure_venv test
        "$VENV/bin/forager" setup
        exec "$VENV/bin/forager" run "$@"
        ;;
    test)
        ensure_venv test
        "$VENV/bin/forager" setup
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./forager.sh run|test [args...]" >&2; exit 2
        ;;
esac
