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
from pose.engine.loop import heatmap_batch_loss
from pose.errors import DataError, PoseError
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
        self.loss = heatmap_batch_loss(cfg.train)
        self.train_source = self.train_set.ann_file if train else None

    def build_model(self) -> nn.Module:
        """The pose network; its backbone from ``model.backbone.init`` when set."""
        from pose.checkpoint import load_backbone

        model = build_model(self.cfg.model, len(self.keypoint_set))
        self.cfg.model.num_keypoints = len(self.keypoint_set)  # config.yaml says what it fixed
        if self.cfg.model.backbone.init:
            self.backbone_init = load_backbone(model.backbone, self.cfg.model.backbone.init,
                                               self.cfg.model.backbone)
        return model

    def load(self, checkpoint, state: dict, device: torch.device) -> nn.Module:
        """A checkpoint's model, whose keypoints must be the data's."""
        from pose.estimator import checkpoint_keypoint_set, model_from_checkpoint

        trained = checkpoint_keypoint_set(state, self.cfg)
        if trained.names != self.keypoint_set.names and "keypoint_set" in state:
            raise DataError(f"checkpoint {checkpoint} was trained on {len(trained)} "
                            f"keypoints ({', '.join(trained.names[:3])}, ...); "
                            f"{self.val_set.ann_file} names {len(self.keypoint_set)}")
        return model_from_checkpoint(self.cfg, checkpoint, device, state,
                                     len(self.keypoint_set))

    def test_setting(self, oracle: bool) -> tuple[str, dict]:
        """What a test run evaluates on, as a phrase and as metrics.json's fields."""
        gt = self.val_set.det_source is None
        flip = self.cfg.eval.flip_test and not oracle
        boxes = "ground-truth boxes" if gt else f"detector boxes from {self.val_set.det_source}"
        return (f"{len(self.val_set)} {boxes}, flip test {'on' if flip else 'off'}",
                {"oracle": oracle, "boxes": "gt" if gt else self.val_set.det_source,
                 "flip_test": flip})

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
        self.train_source = self.train_set.folder if train else None

    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model)

    @staticmethod
    def loss(output: torch.Tensor, batch: dict, device: torch.device) -> torch.Tensor:
        # With MixUp the labels are distributions, which cross_entropy takes as they are.
        return nn.functional.cross_entropy(output.float(),
                                           batch["label"].to(device, non_blocking=True))

    def load(self, checkpoint, state: dict, device: torch.device) -> nn.Module:
        from pose.estimator import model_from_checkpoint

        return model_from_checkpoint(self.cfg, checkpoint, device, state)

    def test_setting(self, oracle: bool) -> tuple[str, dict]:
        return f"{len(self.val_set)} images of {self.val_set.folder}", {}

    def bind(self, model: nn.Module, device: torch.device, oracle: bool = False) -> None:
        self.model, self.device = model, device

    @torch.no_grad()
    def evaluate(self, loader, info, work_dir: Path, progress: bool = False):
        from pose.data.classification import top_k_hits
        from pose.engine.distributed import gather_to_main
        from pose.estimator import AMP_DTYPES

        was_training = self.model.training
        self.model.eval()
        amp = AMP_DTYPES[self.cfg.train.amp]
        seen = {}  # index -> (top-1 hit, top-5 hit): a DistributedSampler repeats a few
        for batch in loader:
            images = batch["image"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                logits = self.model(images)
            hits = top_k_hits(logits.float(), batch["label"].to(self.device))
            seen.update(zip(batch["index"].tolist(), hits.tolist()))
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


def make_task(cfg: Config, train: bool, use_gt_boxes: Optional[bool] = None,
              det_file: Optional[str] = None, oracle: bool = False):
    """The task ``model.type`` names, with its datasets (training set only when ``train``);
    the box options and the oracle (the codec's own targets scored) are a pose evaluation's."""
    if cfg.model.type == "classifier":
        if oracle:
            raise PoseError("--oracle scores a pose codec's own targets; a classifier has none")
        if use_gt_boxes or det_file:
            raise PoseError("--gt-boxes and --det-file choose a pose evaluation's boxes; a "
                            "classifier has none")
        return ClassificationTask(cfg, train)
    # the oracle's targets exist only for annotated people
    return PoseTask(cfg, train, True if oracle else use_gt_boxes, det_file)
