#!/usr/bin/env bash
# The README's test line as a new machine meets it: every cache that pip, PyTorch or the
# project writes points at an empty temporary folder, then the line runs verbatim and the
# wall time and the 15 slowest tests are printed.
#
#   benchmarks/cold_tests.sh              # this Python environment, empty caches
#   benchmarks/cold_tests.sh --new-venv   # also a new virtual environment (torch from pip)
#
# Caches emptied: pip's (XDG_CACHE_HOME), inductor's compiled kernels (TORCHINDUCTOR_CACHE_DIR,
# else /tmp/torchinductor_$USER), Triton's (TRITON_CACHE_DIR), the native DY-ReLU kernels'
# build (TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions), matplotlib's font cache
# (MPLCONFIGDIR), and the project's own bytecode (its __pycache__ folders are removed, as in a
# fresh clone). Installed packages keep the bytecode pip wrote when it installed them, as on
# any machine: pointing PYTHONPYCACHEPREFIX at an empty folder would instead make every
# Python process recompile all of torch (about 19 s a process here where
# PYTHONDONTWRITEBYTECODE is set), which no fresh install does.
set -euo pipefail
cd "$(dirname "$0")/.."

cold=$(mktemp -d -t pose-cold-XXXXXX)
trap 'rm -rf "$cold"' EXIT
export XDG_CACHE_HOME=$cold/cache
export TORCHINDUCTOR_CACHE_DIR=$cold/inductor
export TRITON_CACHE_DIR=$cold/triton
export TORCH_EXTENSIONS_DIR=$cold/torch_extensions
export MPLCONFIGDIR=$cold/matplotlib
find pose tools tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +
export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} --durations=15 -p no:cacheprovider"

if [[ "${1:-}" == "--new-venv" ]]; then
    python -m venv "$cold/venv"
    # shellcheck disable=SC1091
    source "$cold/venv/bin/activate"
fi

echo "cold caches under $cold; python $(command -v python); $(nproc) cores"
line=$(sed -n "s/^pip install -e '.\[test\]' && \(.*\)$/&/p" README.md | head -n 1)
if [[ -z "$line" ]]; then
    echo "the README's test line (pip install -e '.[test]' && ...) was not found" >&2
    exit 2
fi
echo "running: $line"
start=$(date +%s)
status=0
bash -c "$line" || status=$?
end=$(date +%s)
echo "cold wall time of the README's test line: $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s (exit $status)"
exit "$status"
