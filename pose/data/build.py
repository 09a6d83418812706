"""Datasets and codec from a config."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Optional

from pose.config import Config, ConfigError
from pose.data.coco import Augmentation, CropSettings, TopDownCocoDataset
from pose.data.heatmap import HeatmapCodec


def data_path(cfg: Config, path: str) -> Path:
    """A data path from the config: absolute as given, else relative to data.root."""
    p = Path(path)
    return p if p.is_absolute() else Path(cfg.data.root) / p


def make_codec(cfg: Config) -> HeatmapCodec:
    return HeatmapCodec(cfg.data.input_size, cfg.data.heatmap_stride, cfg.data.sigma,
                        cfg.eval.decode, encoding=cfg.data.target_encoding)


def crop_settings(cfg: Config) -> CropSettings:
    """How boxes become crops, for the datasets and the estimator alike."""
    d = cfg.data
    return CropSettings(tuple(d.input_size), d.padding, d.crop_geometry, d.clip_detection_boxes,
                        d.drop_zero_size_boxes)


def augmentation(cfg: Config) -> Augmentation:
    """The training augmentation: each of its fields is the ``data`` key of the same name."""
    return Augmentation(**{f.name: getattr(cfg.data, f.name) for f in fields(Augmentation)})


def build_dataset(cfg: Config, train: bool, use_gt_boxes: Optional[bool] = None,
                  det_file: Optional[str] = None) -> TopDownCocoDataset:
    """Training set (GT boxes, augmented) or evaluation set (GT or detector boxes)."""
    d = cfg.data
    if train:
        return TopDownCocoDataset(data_path(cfg, d.train_ann), data_path(cfg, d.train_images),
                                  make_codec(cfg), train=True, augmentation=augmentation(cfg),
                                  crops=crop_settings(cfg), seed=cfg.runtime.seed,
                                  sigmas=d.oks_sigmas,
                                  skip_damaged_images=d.skip_damaged_images)
    gt_boxes = cfg.eval.use_gt_boxes if use_gt_boxes is None else use_gt_boxes
    det_file = det_file or d.det_file
    if not gt_boxes and not det_file:
        raise ConfigError("evaluation on detector boxes needs a detection file, and "
                          "data.det_file is null: set it, or eval.use_gt_boxes: true")
    boxes = None if gt_boxes else str(data_path(cfg, det_file))
    return TopDownCocoDataset(data_path(cfg, d.val_ann), data_path(cfg, d.val_images),
                              make_codec(cfg), train=False, det_file=boxes,
                              det_score_threshold=d.det_score_threshold, crops=crop_settings(cfg),
                              sigmas=d.oks_sigmas, skip_damaged_images=d.skip_damaged_images)
