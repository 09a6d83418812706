"""Data loading against training speed: crops/s of one loader worker vs the model's img/s.

Times TopDownCocoDataset.__getitem__ (read JPEG, affine crop, augmentation, target encoding)
in this process, which is what one DataLoader worker does, on the real COCO sample when it
is present and on a synthetic dataset otherwise; then a ReLU/ReLU train step at the same
size. Their ratio is the number of workers that keeps the model fed. Last, the load-time
check that every image file is whole (``pose.data.validate.damaged_image``: its signature and
end marker), per file, and what that makes for COCO train2017's 118,287 images.

    python benchmarks/bench_data.py [--size 256 192] [--device cpu] [--batch 16]
    python benchmarks/bench_data.py --task classification [--size 224 224]

``--task classification`` times the classifier's training loader instead
(``pose.data.classification``: ImageFolder's PIL loader and ``transforms.v2``),
side by side with the plain PIL pipeline of torchvision's classic transforms, on the COCO
sample's JPEGs (640x480, about ImageNet's size) copied into class folders, and a MobileNetV2
x1.0 classifier's train step at the same size.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pose.data.coco import Augmentation, TopDownCocoDataset
from pose.data.heatmap import HeatmapCodec
from pose.data.validate import damaged_image

from bench_train_step import measure  # this folder: the same train step, timed the same way

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco_sample"


def dataset_for(size, augment: bool) -> tuple[TopDownCocoDataset, str]:
    codec = HeatmapCodec(size)
    if (SAMPLE / "person_keypoints_sample.json").is_file():
        return TopDownCocoDataset(SAMPLE / "person_keypoints_sample.json", SAMPLE / "images",
                                  codec, train=augment, augmentation=Augmentation()), \
            "COCO val2017 sample (4 images, 12 people)"
    from pose.data.synthetic import generate

    root = generate(tempfile.mkdtemp(), train=40, val=1, seed=0)
    return TopDownCocoDataset(root / "annotations/person_keypoints_train.json", root / "train",
                              codec, train=augment, augmentation=Augmentation()), \
        "synthetic (40 images)"


def crops_per_second(dataset: TopDownCocoDataset, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        dataset.set_epoch(i // len(dataset))
        dataset[i % len(dataset)]
    return count / (time.perf_counter() - start)


COCO_TRAIN_IMAGES = 118_287


def image_check_seconds(dataset: TopDownCocoDataset, count: int = 2000) -> float:
    """Seconds per file of the load-time image check, over the dataset's files in turn (in
    the page cache after the first pass: this is the check's own cost, not the disk's)."""
    files = [dataset.image_dir / image["file_name"] for image in dataset.coco.imgs.values()]
    start = time.perf_counter()
    for i in range(count):
        assert damaged_image(files[i % len(files)]) is None
    return (time.perf_counter() - start) / count


def classification_loaders(size) -> dict[str, object]:
    """Ours and the classic PIL pipeline over the same image folder."""
    import shutil

    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from pose.data.classification import ImageFolderDataset, train_transform

    root = Path(tempfile.mkdtemp()) / "train"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for image in sorted((SAMPLE / "images").glob("*.jpg")):
            shutil.copy(image, root / name / image.name)
    classic = transforms.Compose([
        transforms.RandomResizedCrop(tuple(size)), transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.4, 0.4, 0.4), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return {"ours (transforms.v2)":
            ImageFolderDataset(root, train_transform(size, (0.08, 1.0), 0.5, 0.4)),
            "classic (PIL, torchvision.transforms)": ImageFolder(str(root), classic)}


def images_per_second(dataset, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        dataset[i % len(dataset)]
    return count / (time.perf_counter() - start)


def classification_main(args) -> None:
    from pose.config import ModelConfig
    from pose.models import build_model

    print(f"{args.size[0]}x{args.size[1]} classifier crops from 640x480 JPEGs, "
          f"torch {torch.__version__}")
    loaders = classification_loaders(args.size)
    for dataset in loaders.values():
        images_per_second(dataset, 20)  # warm-up: first calls pay for imports and caches
    # Rounds that take turns, so that a slow spell of the machine hits both alike.
    rounds = {name: [] for name in loaders}
    for _ in range(3):
        for name, dataset in loaders.items():
            rounds[name].append(images_per_second(dataset, args.crops))
    rates = {name: float(np.median(values)) for name, values in rounds.items()}
    for name, rate in rates.items():
        print(f"one worker, {name}: {rate:.1f} images/s (median of 3 rounds)")
    ours, classic = rates.values()
    print(f"ours / classic: {ours / classic:.2f}x")
    cfg = ModelConfig(type="classifier")
    cfg.backbone.width_mult = 1.0
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = torch.randn(args.batch, 3, *args.size), torch.zeros(args.batch).long()
    for step in range(3):
        if step == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model_rate = 2 * args.batch / (time.perf_counter() - start)
    print(f"MobileNetV2 x1.0 classifier train step on the CPU ({args.threads} threads): "
          f"{model_rate:.1f} img/s; loader workers per 1,000 img/s of training: "
          f"{1000 / ours:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("pose", "classification"), default="pose")
    parser.add_argument("--size", type=int, nargs=2, default=None,
                        help="crop height and width (default: 256 192; classification 224 224)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.task == "classification":
        args.size = args.size or [224, 224]
        classification_main(args)
        return
    args.size = args.size or [256, 192]
    print(f"{args.size[0]}x{args.size[1]} crops, torch {torch.__version__}")
    for augment in (True, False):
        dataset, name = dataset_for(args.size, augment)
        rate = crops_per_second(dataset, args.crops)
        print(f"one worker, {'training (augmented)' if augment else 'evaluation'} crops from "
              f"{name}: {rate:.1f} crops/s")
        if augment:
            train_rate = rate
    step_args = argparse.Namespace(batch=args.batch, size=args.size, channels_last=False,
                                   amp="none", warmup=2, steps=3)
    run = ("relu", "relu", False, "")
    model_rate, _ = measure([run], step_args, torch.device(args.device))[run]
    print(f"ReLU/ReLU train step on {args.device} ({args.threads} threads): {model_rate:.1f} img/s")
    print(f"ratio model img/s / worker crops/s: {model_rate / train_rate:.2f} "
          f"(workers needed to keep the model fed: {max(1, -(-model_rate // train_rate)):.0f})")
    seconds = image_check_seconds(dataset)
    print(f"load-time image check: {seconds * 1e6:.0f} us a file, {seconds * COCO_TRAIN_IMAGES:.1f}"
          f" s for COCO train2017's {COCO_TRAIN_IMAGES:,} images (files cached; two small reads "
          f"a file from disk)")


if __name__ == "__main__":
    main()
