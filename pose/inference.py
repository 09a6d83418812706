"""From crops to image-space keypoints: model forward (with flip test), decode, inverse affine."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from pose.data.heatmap import HeatmapCodec
from pose.data.keypoints import COCO_KEYPOINTS
from pose.data.transforms import apply_affine

HeatmapFn = Callable[[dict], torch.Tensor]


def model_heatmaps(model: nn.Module, device: torch.device, flip_test: bool = True,
                   shift_heatmap: bool = True, autocast_dtype=None,
                   channels_last: bool = False,
                   flip_permutation: Optional[np.ndarray] = None) -> HeatmapFn:
    """A batch -> heatmaps function running ``model``, averaging with the mirrored crop
    (``flip_permutation``: the keypoint set's left/right swap, COCO's by default)."""
    if flip_permutation is None:
        flip_permutation = COCO_KEYPOINTS.flip_permutation()
    def run(images: torch.Tensor) -> torch.Tensor:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(images).float()

    def heatmaps(batch: dict) -> torch.Tensor:
        model.eval()  # BatchNorm running statistics, whatever mode training left
        images = batch["image"].to(device, non_blocking=True)
        output = run(images)
        if flip_test:
            flipped = HeatmapCodec.flip_back(run(images.flip(3)), flip_permutation,
                                             shift_heatmap)
            output = (output + flipped) * 0.5
        return output

    return heatmaps


def target_heatmaps(batch: dict) -> torch.Tensor:
    """The encoded targets as if a model had predicted them: the codec's upper bound."""
    return batch["heatmaps"]


@torch.no_grad()
def predict(heatmap_fn: HeatmapFn, loader: Iterable[dict], codec: HeatmapCodec,
            progress: bool = False, num_keypoints: int = len(COCO_KEYPOINTS)
            ) -> dict[str, np.ndarray]:
    """Run over a loader; returns the prediction arrays of pose.evaluation.coco_eval."""
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", leave=False)
    parts: dict[str, list] = {k: [] for k in ("keypoints", "image_ids", "box_scores", "areas",
                                              "indices")}
    for batch in loader:
        heatmaps = heatmap_fn(batch).float().cpu().numpy()
        coords, scores = codec.decode(heatmaps)  # crop pixels (B, K, 2), (B, K)
        coords = apply_affine(coords, batch["inv_matrix"].numpy())  # image pixels
        parts["keypoints"].append(np.concatenate([coords, scores[..., None]], axis=-1))
        parts["image_ids"].append(np.asarray(batch["image_id"]))
        parts["box_scores"].append(np.asarray(batch["score"], dtype=np.float64))
        parts["areas"].append(np.asarray(batch["area"], dtype=np.float64))
        parts["indices"].append(np.asarray(batch["index"]))
    if not parts["keypoints"]:
        return {"keypoints": np.zeros((0, num_keypoints, 3)),
                **{k: np.zeros(0) for k in ("image_ids", "box_scores", "areas", "indices")}}
    return {key: np.concatenate(value) for key, value in parts.items()}
