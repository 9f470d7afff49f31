#!/bin/sh
# The Python of the stage commands in dvc.yaml: `sh stages/python.sh stages/<stage>.py ARGS`.
#
# DVC runs a stage command in a shell with the environment dvc was started with, so a bare
# `python` is whatever PATH finds: after `.venv/bin/dvc repro` without the venv activated,
# that is the system Python (no talkgs) or nothing at all. This script runs the stage with
#   1. $TALKGS_PYTHON, when set;
#   2. else the Python interpreter of the dvc process that runs the stage (its parent or
#      grandparent process, read from /proc on Linux), when that environment has talkgs:
#      `.venv/bin/dvc repro`, `.venv/bin/python -m dvc repro`, `make`, `talkgs repro` all run
#      the stages with the venv they were started from, activated or not;
#   3. else python3 (or python) from PATH, as a bare `python` command would.
# It only picks the interpreter (it is not a dependency of the stages: editing it reruns none).

if [ -n "${TALKGS_PYTHON:-}" ]; then
    exec "$TALKGS_PYTHON" "$@"
fi

has_talkgs() {
    "$1" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("talkgs") is None)' 2>/dev/null
}

pid=$PPID
depth=0
while [ "$depth" -lt 4 ] && [ -r "/proc/$pid/cmdline" ]; do
    exe=$(tr '\000' '\n' < "/proc/$pid/cmdline" | head -n 1)
    case "${exe##*/}" in
        python | python3 | python3.*)
            case "$exe" in
                /*) ;;
                */*) exe="$(cd "/proc/$pid/cwd" 2>/dev/null && pwd -P)/$exe" ;;  # relative to that process's cwd
                *) exe=$(command -v "$exe") ;;  # found on PATH (the same PATH as ours)
            esac
            if [ -x "$exe" ] && has_talkgs "$exe"; then
                exec "$exe" "$@"
            fi
            ;;
    esac
    pid=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null)
    [ -n "$pid" ] && [ "$pid" != 0 ] || break
    depth=$((depth + 1))
done

for exe in python3 python; do
    if command -v "$exe" > /dev/null 2>&1; then
        exec "$exe" "$@"
    fi
done
echo "stages/python.sh: no Python found: activate the talkgs environment (source .venv/bin/activate) or set TALKGS_PYTHON" >&2
exit 127
