"""What a run trains and how it is scored: top-down pose (COCO keypoint AP) or image
classification (top-1/top-5), behind one interface, so that ``pose.engine.runner`` holds one
training loop, one resume logic and one run folder for both.

A task holds its datasets and knows its model, loss, evaluation and the extras its
checkpoints and metrics carry; ``make_task(cfg, train)`` picks one by ``model.type``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from pose.config import Config
from pose.engine.evaluate import evaluate
from pose.errors import DataError
from pose.models import build_model


class PoseTask:
    """Top-down pose estimation; scored by COCO keypoint AP (pycocotools)."""

    metric = "AP"
    batch_transform: Optional[Callable] = None  # batches are used as collated

    def __init__(self, cfg: Config, train: bool, use_gt_boxes: Optional[bool] = None,
                 det_file: Optional[str] = None) -> None:
        from pose.data.build import build_dataset

        self.cfg = cfg
        self.train_set = build_dataset(cfg, train=True) if train else None
        self.val_set = build_dataset(cfg, train=False, use_gt_boxes=use_gt_boxes,
                                     det_file=det_file)
        self.keypoint_set = self.val_set.keypoint_set
        if self.train_set is not None:
            if not len(self.train_set):
                raise DataError(f"training file {self.train_set.ann_file} has no usable person "
                                f"({self.train_set.report.annotations} annotations; "
                                f"tools/check_dataset.py says why)")
            if self.val_set.keypoint_set.names != self.train_set.keypoint_set.names:
                raise DataError(f"{self.val_set.ann_file} names other keypoints than "
                                f"{self.train_set.ann_file} ({len(self.val_set.keypoint_set)} "
                                f"vs {len(self.train_set.keypoint_set)})")
        self.estimator, self.backbone_init = None, None

    def build_model(self) -> nn.Module:
        """The pose network; its backbone from ``model.backbone.init`` when set."""
        from pose.checkpoint import load_backbone

        model = build_model(self.cfg.model, len(self.keypoint_set))
        self.cfg.model.num_keypoints = len(self.keypoint_set)  # config.yaml says what it fixed
        if self.cfg.model.backbone.init:
            self.backbone_init = load_backbone(model.backbone, self.cfg.model.backbone.init,
                                               self.cfg.model.backbone)
        return model

    def loss(self, output: torch.Tensor, batch: dict, device: torch.device) -> torch.Tensor:
        from pose.engine.loop import heatmap_batch_loss

        return heatmap_batch_loss(self.cfg.train)(output, batch, device)

    def bind(self, model: nn.Module, device: torch.device, oracle: bool = False) -> None:
        """The model (or, with ``oracle``, the encoded targets) evaluation scores."""
        from pose.estimator import PoseEstimator
        from pose.inference import target_heatmaps

        self.estimator = PoseEstimator(target_heatmaps, self.cfg, self.keypoint_set) if oracle \
            else PoseEstimator.from_model(model, self.cfg, device, self.keypoint_set)

    def evaluate(self, loader, info, work_dir: Path, progress: bool = False):
        return evaluate(self.estimator, loader, self.val_set, info, work_dir / "results.json",
                        progress=progress)

    def format(self, stats: dict) -> str:
        from pose.evaluation.coco_eval import format_stats

        return format_stats(stats)

    def checkpoint_extra(self) -> dict:
        return {"keypoint_set": self.keypoint_set.to_dict()}

    def metrics_extra(self) -> dict:
        e = self.cfg.eval
        return {"boxes": "gt" if e.use_gt_boxes else self.cfg.data.det_file,
                "flip_test": e.flip_test}

    def describe(self) -> str:
        m = self.cfg.model
        start = f" (backbone from {self.backbone_init})" if self.backbone_init else ""
        return f"{m.backbone.act} / {m.head.act}{start}"


class ClassificationTask:
    """Image classification in the ImageNet folder layout; scored by top-1 and top-5
    accuracy (fractions) on the validation folder."""

    metric = "top1"

    def __init__(self, cfg: Config, train: bool) -> None:
        from pose.data.build import data_path
        from pose.data.classification import (ImageFolderDataset, batch_transform,
                                              eval_transform, train_transform)

        d = cfg.data
        self.cfg = cfg
        self.train_set = ImageFolderDataset(
            data_path(cfg, d.train_images),
            train_transform(d.image_size, d.crop_scale, d.flip_prob, d.color_jitter)) \
            if train else None
        classes = self.train_set.classes if train else None
        self.val_set = ImageFolderDataset(data_path(cfg, d.val_images),
                                          eval_transform(d.image_size, d.val_resize), classes)
        self.classes = self.val_set.classes
        if cfg.model.num_classes and cfg.model.num_classes != len(self.classes):
            raise DataError(f"config key 'model.num_classes': {cfg.model.num_classes}, but "
                            f"{self.val_set.folder} has {len(self.classes)} class folders "
                            f"(leave it unset to follow the data)")
        cfg.model.num_classes = len(self.classes)
        self.batch_transform = batch_transform(len(self.classes), d.mixup_alpha) \
            if train else None
        self.model = None

    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model)

    @staticmethod
    def loss(output: torch.Tensor, batch: dict, device: torch.device) -> torch.Tensor:
        # With MixUp the labels are distributions, which cross_entropy takes as they are.
        return nn.functional.cross_entropy(output.float(),
                                           batch["label"].to(device, non_blocking=True))

    def bind(self, model: nn.Module, device: torch.device, oracle: bool = False) -> None:
        self.model, self.device = model, device

    @torch.no_grad()
    def evaluate(self, loader, info, work_dir: Path, progress: bool = False):
        from pose.data.classification import top_k_correct
        from pose.engine.distributed import gather_to_main

        was_training = self.model.training
        self.model.eval()
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.train.amp)
        seen = {}  # index -> (top-1 hit, top-5 hit): a DistributedSampler repeats a few
        for batch in loader:
            images = batch["image"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                logits = self.model(images)
            labels = batch["label"].to(self.device)
            for i, index in enumerate(batch["index"].tolist()):
                seen[index] = top_k_correct(logits[i:i + 1].float(), labels[i:i + 1])
        self.model.train(was_training)
        shards = gather_to_main({"seen": seen}, info)
        if not info.is_main:
            return None
        merged = {}
        for shard in shards:
            merged.update(shard["seen"])
        count = max(len(merged), 1)
        return {"top1": sum(h[0] for h in merged.values()) / count,
                "top5": sum(h[1] for h in merged.values()) / count, "images": len(merged)}

    def format(self, stats: dict) -> str:
        return (f"top-1 {stats['top1']:.4f}, top-5 {stats['top5']:.4f} "
                f"({stats['images']} images)")

    def checkpoint_extra(self) -> dict:
        return {"classes": list(self.classes)}

    def metrics_extra(self) -> dict:
        return {"classes": len(self.classes)}

    def describe(self) -> str:
        return f"classifier, {self.cfg.model.backbone.act}"


def make_task(cfg: Config, train: bool, **kwargs):
    """The task ``model.type`` names, with its datasets (training set only when ``train``)."""
    if cfg.model.type == "classifier":
        return ClassificationTask(cfg, train)
    return PoseTask(cfg, train, **kwargs)
