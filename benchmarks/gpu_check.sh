#!/usr/bin/env bash
# The GPU check (issue 26): one prepared script for a bare GPU machine that has Python 3.12 and torch (CUDA build)
# but not monai, nibabel, captum or flwr, and no network.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # where pip reaches PyPI (any OS): fill benchmarks/wheels/
#                                                 # with the wheels for CPython 3.12, manylinux x86_64 (git-ignored)
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (offline): install those wheels into
#                                                 # benchmarks/.gpu_site/, put the sources on PYTHONPATH, run
#                                                 # bench_train (all modes), bench_data and the paper preset on a
#                                                 # subset (five strategies, 2 rounds) in under 8 minutes, and print
#                                                 # one summary table (also in runs/gpu_check/summary.txt)
#   bash benchmarks/gpu_check.sh --dry-run        # any machine: check the environment and every step's arguments,
#                                                 # print the plan, run nothing heavy (the test suite runs this)
#
# Environment: PYTHON (default python3), GLIOFED_WHEELS (default benchmarks/wheels), GPU_CHECK_OUT (default
# runs/gpu_check). Extra arguments after the mode go to benchmarks/gpu_check.py run (e.g. --subjects-per-site 10).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
WHEELS="${GLIOFED_WHEELS:-$HERE/wheels}"
SITE_DIR="$HERE/.gpu_site"
OUT="${GPU_CHECK_OUT:-$ROOT/runs/gpu_check}"
MODE="run"
case "${1:-}" in
    --fetch-wheels) MODE="fetch"; shift ;;
    --dry-run) MODE="dry"; shift ;;
    --help|-h) sed -n '2,18p' "$0"; exit 0 ;;
esac

if [ "$MODE" = "fetch" ]; then
    # the pinned list comes from this environment (it must have gliofed's dependencies installed: the venv)
    mkdir -p "$WHEELS"
    PYTHONPATH="$ROOT" "$PYTHON" "$HERE/gpu_check.py" requirements > "$WHEELS/requirements.txt"
    platforms=()
    for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_26_x86_64 \
               manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
               manylinux_2_35_x86_64 manylinux1_x86_64 manylinux2010_x86_64 any; do
        platforms+=(--platform "$tag")
    done
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --abi abi3 --abi none "${platforms[@]}" --dest "$WHEELS" -r "$WHEELS/requirements.txt"
    echo "$(ls "$WHEELS"/*.whl | wc -l) wheels in $WHEELS for $(wc -l < "$WHEELS/requirements.txt") requirements;" \
         "copy the folder (and this checkout) to the GPU machine and run: bash benchmarks/gpu_check.sh"
    exit 0
fi

if [ "$MODE" = "run" ]; then
    if [ ! -f "$WHEELS/requirements.txt" ]; then
        echo "no wheel folder at $WHEELS: run 'bash benchmarks/gpu_check.sh --fetch-wheels' where pip works first." >&2
        exit 2
    fi
    # exactly the listed wheels, beside (not over) the machine's own torch: --no-deps, into a folder of our own
    if [ ! -f "$SITE_DIR/.installed" ] || ! cmp -s "$WHEELS/requirements.txt" "$SITE_DIR/.installed"; then
        rm -rf "$SITE_DIR"
        "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$SITE_DIR" \
            -r "$WHEELS/requirements.txt"
        cp "$WHEELS/requirements.txt" "$SITE_DIR/.installed"
    fi
fi

export PYTHONPATH="$ROOT${SITE_DIR:+:$SITE_DIR}${PYTHONPATH:+:$PYTHONPATH}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
if [ "$MODE" = "dry" ]; then
    echo "dry run: PYTHON=$PYTHON; wheels: $WHEELS ($( [ -f "$WHEELS/requirements.txt" ] && \
         echo "$(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels" || echo "not fetched yet")); PYTHONPATH=$PYTHONPATH"
    exec "$PYTHON" "$HERE/gpu_check.py" run --out "$OUT" --dry-run "$@"
fi
exec "$PYTHON" "$HERE/gpu_check.py" run --out "$OUT" "$@"
