"""Image classification data in the ImageNet folder layout, for ``model.type: classifier``.

    ROOT/train/<class>/*.JPEG      ROOT/val/<class>/*.JPEG

Read by torchvision's ``ImageFolder`` (its PIL loader) and augmented by
``torchvision.transforms.v2`` (on the PIL image, then one conversion to a tensor):
- training: a random resized crop (area fraction ``data.crop_scale``), a horizontal flip
  (``data.flip_prob``), colour jitter (brightness, contrast and saturation by
  ``data.color_jitter``), then ImageNet normalisation; MixUp (``data.mixup_alpha``) mixes
  whole batches (``batch_transform``), as torchvision's reference applies it after collation;
- evaluation: the shorter side resized to ``data.val_resize``, the centre ``data.image_size``.

Both folders are checked before any work: every class folder holds at least one image, every
JPEG or PNG file is whole (``pose.data.validate.damaged_image``), and the validation classes
are the training classes; a fault is one DataError naming the folder or file. A sample is a
dict: ``image`` (3, H, W) float tensor, ``label`` (an int, or with MixUp a distribution over
the classes after batching), ``index``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pose.data.validate import damaged_image
from pose.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_image(path: str):
    """An image file as an RGB PIL image (ImageFolder's own loader); an unreadable file is
    one DataError naming it."""
    from PIL import UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"image file {path} is unreadable or corrupt ({error})") from None


def train_transform(image_size, crop_scale, flip_prob: float, color_jitter: float):
    from torchvision.transforms import v2

    # Crop and jitter on the PIL image, then one conversion: the crop shrinks the image first,
    # and PIL's resize is the fastest here (benchmarks/bench_data.py --task classification).
    steps = [v2.RandomResizedCrop(tuple(image_size), scale=tuple(crop_scale), antialias=True),
             v2.RandomHorizontalFlip(flip_prob)]
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose(steps + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                               v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(image_size, resize: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(tuple(image_size)),
                       v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageFolderDataset(Dataset):
    """A checked ``torchvision.datasets.ImageFolder`` giving dict samples.

    Args:
        folder: the split's folder, one subfolder per class.
        transform: applied to each loaded (RGB PIL) image.
        classes: the class names the labels must follow (the training set's, for the
            validation set); None: this folder's own.
    """

    def __init__(self, folder: str | Path, transform: Callable,
                 classes: Optional[list[str]] = None) -> None:
        from torchvision.datasets import ImageFolder

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"image folder not found: {self.folder}")
        strangers: list[str] = []

        def is_image(path: str) -> bool:  # ImageFolder asks this of every file, once
            image = path.lower().endswith(IMAGE_SUFFIXES)
            if not image and not Path(path).name.startswith("."):
                strangers.append(path)
            return image

        self.images = ImageFolder(str(self.folder), loader=load_image, is_valid_file=is_image,
                                  allow_empty=True)
        found = self.images.classes
        if not found:
            raise DataError(f"{self.folder} holds no class folder (the layout is "
                            f"{self.folder}/<class>/<image>)")
        if strangers:
            raise DataError(f"{strangers[0]} is not an image file ({', '.join(IMAGE_SUFFIXES)})"
                            f"; a class folder holds images only")
        counts = np.bincount([label for _, label in self.images.samples], minlength=len(found))
        if (counts == 0).any():
            empty = found[int(np.flatnonzero(counts == 0)[0])]
            raise DataError(f"class folder {self.folder / empty} holds no image file")
        if classes is not None and found != list(classes):
            missing = sorted(set(found) - set(classes))
            absent = sorted(set(classes) - set(found))
            detail = (f"{', '.join(missing[:5])} not among the training classes" if missing
                      else f"no folder for training classes {', '.join(absent[:5])}")
            raise DataError(f"{self.folder}: {detail} (the two splits must have the same "
                            f"class folders)")
        for path, _ in self.images.samples:
            reason = damaged_image(Path(path))
            if reason:
                raise DataError(f"image file {path} is {reason}")
        self.classes, self.transform = self.images.classes, transform

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: torch's DataLoader seeds each epoch's workers, and the transforms
        draw from them."""

    def __getitem__(self, index: int) -> dict:
        path, label = self.images.samples[index]
        return {"image": self.transform(load_image(path)), "label": label, "index": index}


def batch_transform(num_classes: int, mixup_alpha: float) -> Optional[Callable]:
    """MixUp over a collated batch (labels become distributions), or None when off."""
    if mixup_alpha <= 0:
        return None
    from torchvision.transforms import v2

    mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)

    def mix(batch: dict) -> dict:
        batch["image"], batch["label"] = mixup(batch["image"], batch["label"])
        return batch

    return mix


def top_k_hits(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """(N, len(ks)) booleans: whether each sample's label is among its top k classes, for each
    k (k capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, :k].any(1) for k in ks], dim=1)
