#!/usr/bin/env bash
# GPU readiness check of zer02llm, one command on a machine with one CUDA GPU (H100/H200: under 8 minutes).
#
#   bash scripts/gpu_check.sh [--out DIR] [--budget-s S] [--presets 16gb,24gb,40gb] [--skip-tests] [--only RUNS]
#   bash scripts/gpu_check.sh --cpu-smoke [--out DIR]   # the same steps at a tiny shape on the CPU (CI, < 90 s)
#   bash scripts/gpu_check.sh --fetch-wheels           # on a machine with a package index: fill .whl/
#
# It runs `pytest -m gpu`, then scripts/bench.py at each GPU preset (eager and compiled, dense and MoE,
# the transformers Llama peer beside the dense model), with batch-1 generation in the eager runs, and
# writes report.json and report.md (tokens/s, MFU with its formula and the peak it divides by, peak
# memory, the peer ratio) plus the logs into DIR (default outputs/gpu_check/<timestamp>). The whole run
# keeps to --budget-s (default 450 s, setup included): runs go in the order 16gb eager and compiled, 24gb
# and 40gb eager, 24gb and 40gb compiled, and one that would no longer fit is skipped and listed in the
# report with the command that runs just the skipped ones (--skip-tests --only ...); a fresh machine
# compiles each distinct shape in 30-90 s, so expect the larger presets' compiled runs to need that second
# call. Exit status: 0 when every test passed and every run that started finished, 1 otherwise, 2 for a
# usage or setup error.
#
# A CUDA machine may have torch (its own CUDA build), triton, transformers, tokenizers, safetensors,
# numpy, matplotlib, jinja2, tqdm and pytest, but no package index and none of hydra-core, omegaconf,
# antlr4-python3-runtime, submitit or hydra-submitit-launcher (docs/gpu.md). When hydra is missing, this
# script installs the wheels of .whl/ (never torch) into /tmp/zer02llm-site and runs with
# PYTHONPATH=/tmp/zer02llm-site:$PWD, the checkout used in place (no pip install -e). To bring them,
# on a machine with a package index, in the repository root, `bash scripts/gpu_check.sh --fetch-wheels` runs:
#   echo /.whl/ >> .git/info/exclude          # once: .whl/ stays out of git
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 hydra-submitit-launcher==1.2.0
#   python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3    # an sdist only: built here
# (the versions installed there, read from its Python; without them the ranges of pyproject.toml, with
# omegaconf < 2.4 as hydra-core 1.3 requires). Then copy the checkout with .whl/ to the CUDA machine and
# run this script there.
# Environment: PYTHON (default python3), WHEEL_DIR (default .whl).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
GPU_CHECK_START=$(date +%s)  # the budget counts from here, setup included
export GPU_CHECK_START
PY=${PYTHON:-python3}
WHEEL_DIR=${WHEEL_DIR:-.whl}

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }

pin() {  # pin NAME FALLBACK_SPEC: NAME==<version installed here>, else NAME<FALLBACK_SPEC>
    local version
    if version=$("$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null); then
        echo "$1==$version"
    else
        echo "$1$2"
    fi
}

fetch_wheels() {
    mkdir -p "$WHEEL_DIR" || return 1
    if [ "$WHEEL_DIR" = .whl ] && [ -d .git ]; then
        mkdir -p .git/info
        grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    fi
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEEL_DIR" \
        "$(pin hydra-core '>=1.3,<1.4')" "$(pin omegaconf '>=2.3,<2.4')" "$(pin submitit '>=1.5')" \
        "$(pin hydra-submitit-launcher '>=1.2')" || return 1
    "$PY" -m pip wheel -q --no-deps -w "$WHEEL_DIR" "$(pin antlr4-python3-runtime '==4.9.3')" || return 1
    ls -l "$WHEEL_DIR"
    echo "copy the checkout with $WHEEL_DIR/ to the CUDA machine and run 'bash scripts/gpu_check.sh' there"
    return 0
}

# hydra and friends from the wheels, when this Python lacks them; the checkout through PYTHONPATH
setup_python_path() {
    if "$PY" -c "import hydra, omegaconf" >/dev/null 2>&1; then
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
        return 0
    fi
    shopt -s nullglob
    local wheels=("$WHEEL_DIR"/*.whl) wheel site=/tmp/zer02llm-site
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "error: hydra-core is not importable by $PY and $WHEEL_DIR/ holds no wheels: run" \
             "'bash scripts/gpu_check.sh --fetch-wheels' on a machine with a package index and copy $WHEEL_DIR/ here" >&2
        return 2
    fi
    for wheel in "${wheels[@]}"; do
        case "$(basename "$wheel")" in
            torch-*|triton-*|nvidia_*) echo "error: $wheel: torch stays the machine's own CUDA build;" \
                                            "remove it from $WHEEL_DIR" >&2; return 2 ;;
        esac
    done
    echo "installing ${#wheels[@]} wheels from $WHEEL_DIR into $site (hydra is missing here)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "${wheels[@]}" || return 1
    export PYTHONPATH="$site:$PWD"
}

out="" smoke=0 fetch=0
report_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "error: --out needs a directory" >&2; exit 2; }; out=$2; shift ;;
        --out=*) out=${1#--out=} ;;
        --cpu-smoke) smoke=1; report_args+=(--cpu-smoke) ;;
        --fetch-wheels) fetch=1 ;;
        --budget-s|--presets|--only) [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
                                     report_args+=("$1" "$2"); shift ;;
        --skip-tests) report_args+=(--skip-tests) ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ $fetch = 1 ]; then
    fetch_wheels
    exit $?
fi
setup_python_path || exit $?
if [ -z "$out" ]; then
    out=outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)
fi
mkdir -p "$out" || exit 2
[ $smoke = 1 ] && echo "CPU smoke run: tiny shapes, CUDA-only parts skipped (the report says which)"
"$PY" scripts/gpu_report.py --out "$out" ${report_args[@]+"${report_args[@]}"} 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
