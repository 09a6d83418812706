#!/usr/bin/env bash
# The GPU check on the GPU machine, as one command (docs/performance.md, "GPU"):
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]     # e.g. --budget 300
#
# The machine has torch, torchvision, OpenCV, ONNX, TensorBoard, matplotlib, scipy, tqdm and
# pytest-xdist, no network, and lacks pycocotools, albumentations and submitit: those come as
# wheels carried in .whl/ (made here by benchmarks/gpu_carry.sh). pip installs them from that
# folder alone, resolving their needs against what the machine has, then the project itself
# without its dependencies. Results go to $OUT (summary.md, summary.json, one log per part).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${WHEELS:-.whl}
python=${PYTHON:-python3}
if compgen -G "$wheels/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --find-links "$wheels" pycocotools albumentations submitit
fi
"$python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
exec "$python" benchmarks/gpu_check.py "$@"
