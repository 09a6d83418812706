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
# The device tool's call, with room for a second try inside 15 minutes of device time:
#   run(command="bash benchmarks/gpu_check.sh --budget 300", carry=[".whl"], timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${WHEELS:-.whl}
python=${PYTHON:-python3}
if compgen -G "$wheels/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --find-links "$wheels" pycocotools albumentations submitit
fi
# The project itself, without its dependencies; where the image's setuptools cannot build an
# editable install, the checkout on PYTHONPATH serves the same (every part runs from here).
if ! "$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2> /tmp/pip.log; then
    echo "pip could not install the project ($(tail -n 1 /tmp/pip.log)); using PYTHONPATH"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" benchmarks/gpu_check.py "$@"
