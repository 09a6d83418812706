"""The inference path: an image and person boxes -> COCO-format keypoints.

:class:`PoseEstimator` is the one way the project goes from crops to people: evaluation
(``tools/test.py``, the evaluations of ``tools/train.py``), the demo and the Python API all
run it, with the config's crop (``data.padding``, ``data.crop_geometry``,
``data.clip_detection_boxes``), flip test, decoding, rescoring and OKS-NMS, so none of them
can drift from the others.

    from pose.estimator import PoseEstimator

    estimator = PoseEstimator.from_checkpoint("work_dirs/run/config.yaml",
                                              "work_dirs/run/best.pth")
    people = estimator(image_rgb, [([x, y, w, h], score), ...])
    # [{"image_id": 0, "category_id": 1, "keypoints": [x1, y1, s1, ...], "score": ...}, ...]
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from pose.config import Config, load_config
from pose.data.build import crop_settings, make_codec
from pose.data.coco import normalize
from pose.data.keypoints import COCO_KEYPOINTS, KeypointSet
from pose.data.transforms import invert_affine
from pose.checkpoint import load_checkpoint, model_weights
from pose.inference import HeatmapFn, model_heatmaps, predict
from pose.errors import PoseError
from pose.evaluation.coco_eval import make_results

AMP_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
Boxes = Sequence[tuple[Sequence[float], float]]  # ((x, y, w, h), score) per person


def resolve_device(cfg: Config) -> torch.device:
    """The config's device (``runtime.device``); under torchrun, this process's GPU."""
    wanted = cfg.runtime.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise PoseError("runtime.device is 'cuda' but no CUDA device is available")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def checkpoint_keypoint_set(state: dict, cfg: Config) -> KeypointSet:
    """The keypoint set a checkpoint was trained with (stored since the set comes from the
    data); COCO's for older checkpoints of 17-keypoint models."""
    if isinstance(state.get("keypoint_set"), dict):
        return KeypointSet.from_dict(state["keypoint_set"])
    return COCO_KEYPOINTS


def _mismatch_message(checkpoint: Path, model: nn.Module, weights: dict, state: dict) -> str:
    ours = model.state_dict()
    missing = [k for k in ours if k not in weights]
    unexpected = [k for k in weights if k not in ours]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(ours[k].shape)}" for k in ours
              if k in weights and weights[k].shape != ours[k].shape]
    parts = []
    for title, keys in (("missing", missing), ("unexpected", unexpected),
                        ("shape (checkpoint vs config)", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {title}: {', '.join(keys[:3])}{more}")
    trained = ""
    stored = state.get("config") if isinstance(state.get("config"), dict) else None
    if stored:
        model_cfg = stored.get("model", {})
        backbone, head = model_cfg.get("backbone", {}), model_cfg.get("head", {})
        trained = (f"; it was trained with backbone act {backbone.get('act')!r}"
                   f", head act {head.get('act')!r}, "
                   f"{model_cfg.get('num_keypoints')} keypoints")
    return (f"checkpoint {checkpoint} does not fit the config's model ({'; '.join(parts)})"
            f"{trained}; try --config {checkpoint.parent / 'config.yaml'}")


def model_from_checkpoint(cfg: Config, checkpoint: str | Path, device: torch.device,
                          state: Optional[dict] = None,
                          num_keypoints: Optional[int] = None) -> nn.Module:
    """The config's model with a checkpoint's weights, in eval mode on ``device``; a
    checkpoint of another architecture is one error listing the keys that differ."""
    from pose.models import build_model

    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint) if state is None else state
    if cfg.model.type == "classifier" and not cfg.model.num_classes and state.get("classes"):
        cfg.model.num_classes = len(state["classes"])  # the classes it was trained on
    if num_keypoints is None:
        num_keypoints = len(checkpoint_keypoint_set(state, cfg))
    model = build_model(cfg.model, num_keypoints, f"checkpoint {checkpoint}")
    weights = model_weights(state)
    ours = model.state_dict()
    if set(weights) != set(ours) or any(weights[k].shape != ours[k].shape for k in ours):
        raise PoseError(_mismatch_message(checkpoint, model, weights, state))
    model.load_state_dict(weights)
    model.to(device).eval()
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def rgb_image(image) -> np.ndarray:
    """An (H, W, 3) uint8 array from what the Python API accepts; anything else is one
    PoseError saying what was given."""
    if not isinstance(image, np.ndarray):
        raise PoseError(f"the image must be a numpy array (H, W, 3) of RGB uint8, not a "
                        f"{type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
        raise PoseError(f"the image must be RGB uint8 of shape (H, W, 3) (or greyscale "
                        f"(H, W)); got {image.dtype} of shape {image.shape}")
    return image


class PoseEstimator:
    """Person crops -> COCO keypoint results, with every setting from the config.

    Args:
        heatmap_fn: batch -> heatmaps (``pose.inference``: a model with flip test, or
            the encoded targets for the oracle).
        cfg: the config (its ``data`` crop settings, ``eval`` decoding and result settings).
        keypoint_set: the keypoints the heatmaps stand for.
    """

    def __init__(self, heatmap_fn: HeatmapFn, cfg: Config,
                 keypoint_set: KeypointSet = COCO_KEYPOINTS) -> None:
        self.heatmap_fn, self.cfg, self.keypoint_set = heatmap_fn, cfg, keypoint_set
        self.codec = make_codec(cfg)
        self.crops = crop_settings(cfg)

    @classmethod
    def from_model(cls, model: nn.Module, cfg: Config, device: torch.device,
                   keypoint_set: KeypointSet = COCO_KEYPOINTS,
                   flip_test: Optional[bool] = None) -> "PoseEstimator":
        flip = cfg.eval.flip_test if flip_test is None else flip_test
        heatmap_fn = model_heatmaps(model, device, flip, cfg.eval.shift_heatmap,
                                    AMP_DTYPES[cfg.train.amp], cfg.runtime.channels_last,
                                    keypoint_set.flip_permutation())
        return cls(heatmap_fn, cfg, keypoint_set)

    @classmethod
    def from_checkpoint(cls, config: Config | str | Path, checkpoint: str | Path,
                        device: Optional[torch.device | str] = None,
                        flip_test: Optional[bool] = None) -> "PoseEstimator":
        """A config (object or YAML path) and a checkpoint of ``tools/train.py``; the device
        is the config's (``runtime.device``) unless given."""
        cfg = config if isinstance(config, Config) else load_config(config)
        device = resolve_device(cfg) if device is None else torch.device(device)
        state = load_checkpoint(checkpoint)
        keypoint_set = checkpoint_keypoint_set(state, cfg)
        model = model_from_checkpoint(cfg, checkpoint, device, state, len(keypoint_set))
        return cls.from_model(model, cfg, device, keypoint_set, flip_test)

    def predictions(self, loader: Iterable[dict], progress: bool = False) -> dict:
        """Run over batches of crops (a dataset's or :meth:`crops`'); prediction arrays."""
        return predict(self.heatmap_fn, loader, self.codec, progress, len(self.keypoint_set))

    def results(self, predictions: dict) -> list[dict]:
        """Rescoring and OKS-NMS as configured: COCO keypoint results."""
        e = self.cfg.eval
        return make_results(predictions, e.keypoint_score_threshold, e.oks_nms_threshold,
                            self.keypoint_set.category_id, self.keypoint_set.oks_sigmas)

    def crops_of(self, image: np.ndarray, boxes: Boxes, image_id: int = 0) -> list[dict]:
        """One evaluation sample per box (a box without a crop is dropped), as the dataset
        gives for detector boxes."""
        samples = []
        for index, (box, score) in enumerate(boxes):
            crop = self.crops.detection_center_scale(box, image.shape[1], image.shape[0])
            if crop is None:
                continue
            pixels, matrix = self.crops.crop(image, *crop)
            samples.append({"image": normalize(pixels),
                            "inv_matrix": torch.from_numpy(invert_affine(matrix)),
                            "image_id": image_id, "score": float(score),
                            "area": float(crop[1][0] * crop[1][1]), "index": index})
        return samples

    def __call__(self, image: np.ndarray, boxes: Boxes, image_id: int = 0,
                 batch_size: Optional[int] = None) -> list[dict]:
        """People in an RGB uint8 (H, W, 3) image (a greyscale (H, W) or (H, W, 1) one is
        taken as grey RGB): COCO keypoint results (``keypoints`` a flat list of x, y, score in
        image pixels; ``score`` the rescored person score)."""
        samples = self.crops_of(rgb_image(image), boxes, image_id)
        if not samples:
            return []
        loader = torch.utils.data.DataLoader(samples,
                                             batch_size=batch_size or self.cfg.eval.batch_size)
        return self.results(self.predictions(loader))
