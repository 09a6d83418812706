#!/usr/bin/env bash
# Prepare here the wheels that benchmarks/gpu_check.sh installs on the GPU machine:
#
#   bash benchmarks/gpu_carry.sh [FOLDER]      # default .whl (ignored by git)
#
# That machine runs CPython 3.12 on manylinux x86_64, has no network, and lacks the project's
# pycocotools, albumentations and submitit. pip resolves those three for its platform (with a
# report of every package the install would bring); the ones its image already has (IMAGE,
# from the device tool's KINDS.md) are dropped, and exactly the rest are downloaded. Last, a
# dry run installs the folder's wheels alone, offline, for that platform: every wheel fits it,
# and nothing the three need is missing from the folder or the image.
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:-.whl}
target=(--python-version 3.12 --implementation cp --abi cp312 --only-binary=:all:
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any)
# What the GPU machine's image holds (normalised names) that the three may need.
IMAGE="numpy scipy pyyaml typing-extensions opencv-python-headless cloudpickle matplotlib
contourpy cycler fonttools kiwisolver packaging pillow pyparsing python-dateutil six"
report=$(mktemp)
python -m pip install --quiet --dry-run --ignore-installed --target "$(mktemp -d)" \
    "${target[@]}" --report "$report" pycocotools albumentations submitit
needed=$(python - "$report" "$IMAGE" <<'PY'
import json, re, sys
image = set(sys.argv[2].split())
for item in json.load(open(sys.argv[1]))["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name not in image:
        print(f"{name}=={item['metadata']['version']}")
PY
)
rm -f "$report"
rm -rf "$folder" && mkdir -p "$folder"
# shellcheck disable=SC2086
python -m pip download --quiet --no-deps "${target[@]}" -d "$folder" $needed
python -m pip install --quiet --dry-run --ignore-installed --no-index --find-links "$folder" \
    --target "$(mktemp -d)" "${target[@]}" --no-deps "$folder"/*.whl
echo "$(ls "$folder" | wc -l) wheels, $(du -sh "$folder" | cut -f1) in $folder:"
ls "$folder"
