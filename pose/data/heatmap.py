"""Gaussian heatmap codec: keypoints in crop pixels <-> heatmaps at 1/stride resolution.

Heatmap pixel (u, v) stands for crop pixel (u * stride, v * stride). Targets are Gaussians
centred on the exact (sub-pixel) keypoint position, truncated at 3 sigma. Decoding takes the
argmax and moves a quarter pixel towards the higher neighbour (``quarter``) or applies the
Taylor refinement of DARK (Zhang et al., CVPR 2020) on the log of a blurred heatmap (``dark``).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from pose.data.keypoints import flip_permutation


class HeatmapCodec:
    def __init__(self, input_size, stride: int = 4, sigma: float = 2.0,
                 decode: str = "quarter", dark_kernel: int = 11) -> None:
        """``input_size``: crop (height, width) in pixels; heatmaps are (height, width) / stride."""
        if decode not in ("quarter", "dark"):
            raise ValueError(f"decode must be 'quarter' or 'dark', got {decode!r}")
        height, width = input_size
        if height % stride or width % stride:
            raise ValueError(f"input size {height}x{width} is not divisible by stride {stride}")
        self.input_size = (height, width)
        self.heatmap_size = (height // stride, width // stride)
        self.stride, self.sigma, self.decode_mode = stride, sigma, decode
        self.dark_kernel = dark_kernel

    def encode(self, keypoints: np.ndarray, visible: np.ndarray):
        """(K, 2) crop-pixel keypoints and (K,) visibility -> heatmaps (K, h, w), weights (K,).

        A joint gets weight 0 when unlabelled or when its 3-sigma window misses the heatmap.
        """
        h, w = self.heatmap_size
        mu = np.asarray(keypoints, dtype=np.float64)[:, :2] / self.stride  # (K, 2)
        radius = 3.0 * self.sigma
        dx = np.arange(w)[None, :] - mu[:, 0:1]  # (K, w)
        dy = np.arange(h)[None, :] - mu[:, 1:2]  # (K, h)
        gx = np.exp(-dx ** 2 / (2 * self.sigma ** 2)) * (np.abs(dx) <= radius)
        gy = np.exp(-dy ** 2 / (2 * self.sigma ** 2)) * (np.abs(dy) <= radius)
        inside = ((mu[:, 0] >= -radius) & (mu[:, 0] <= w - 1 + radius)
                  & (mu[:, 1] >= -radius) & (mu[:, 1] <= h - 1 + radius))
        weights = ((np.asarray(visible) > 0) & inside).astype(np.float32)
        heatmaps = gy[:, :, None] * gx[:, None, :] * weights[:, None, None]  # (K, h, w)
        return heatmaps.astype(np.float32), weights

    def decode(self, heatmaps: np.ndarray):
        """(N, K, h, w) heatmaps -> keypoints (N, K, 2) in crop pixels and scores (N, K)."""
        heatmaps = np.asarray(heatmaps, dtype=np.float32)
        n, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(n, k, h * w)
        index = flat.argmax(axis=2)
        scores = np.take_along_axis(flat, index[..., None], axis=2)[..., 0]
        coords = np.stack([index % w, index // w], axis=-1).astype(np.float64)  # (N, K, 2)
        quarter = self._refine_quarter(heatmaps, coords)
        if self.decode_mode == "dark":
            coords = self._refine_dark(heatmaps, coords, fallback=quarter)
        else:
            coords = quarter
        return coords * self.stride, scores

    @staticmethod
    def _refine_quarter(heatmaps: np.ndarray, coords: np.ndarray) -> np.ndarray:
        n, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(n, k, h * w)
        x, y = coords[..., 0].astype(int), coords[..., 1].astype(int)

        def at(xx, yy):
            idx = np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)
            return np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]

        interior_x = (x > 0) & (x < w - 1)
        interior_y = (y > 0) & (y < h - 1)
        step_x = np.sign(at(x + 1, y) - at(x - 1, y)) * interior_x
        step_y = np.sign(at(x, y + 1) - at(x, y - 1)) * interior_y
        return coords + 0.25 * np.stack([step_x, step_y], axis=-1)

    def _refine_dark(self, heatmaps: np.ndarray, coords: np.ndarray,
                     fallback: np.ndarray) -> np.ndarray:
        """DARK where the blur window fits inside the heatmap; ``fallback`` elsewhere, since
        the blur's border handling biases peaks near the edge."""
        n, k, h, w = heatmaps.shape
        blurred = np.empty_like(heatmaps)
        size = self.dark_kernel
        for i in range(n):
            for j in range(k):
                peak = heatmaps[i, j].max()
                b = cv2.GaussianBlur(heatmaps[i, j], (size, size), 0)
                blurred[i, j] = b * (peak / b.max()) if b.max() > 0 else b
        logs = np.log(np.maximum(blurred, 1e-10)).reshape(n, k, h * w)
        x, y = coords[..., 0].astype(int), coords[..., 1].astype(int)

        def at(dx, dy):
            idx = np.clip(y + dy, 0, h - 1) * w + np.clip(x + dx, 0, w - 1)
            return np.take_along_axis(logs, idx[..., None], axis=2)[..., 0]

        center = at(0, 0)
        gx, gy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
        hxx = 0.25 * (at(2, 0) - 2 * center + at(-2, 0))
        hyy = 0.25 * (at(0, 2) - 2 * center + at(0, -2))
        hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
        det = hxx * hyy - hxy ** 2
        margin = max(size // 2, 2)
        ok = ((x >= margin) & (x < w - margin) & (y >= margin) & (y < h - margin)
              & (np.abs(det) > 1e-12))
        safe = np.where(ok, det, 1.0)
        # offset = -H^-1 g, with H = [[hxx, hxy], [hxy, hyy]]
        off_x = -(hyy * gx - hxy * gy) / safe
        off_y = -(-hxy * gx + hxx * gy) / safe
        offset = np.clip(np.stack([off_x, off_y], axis=-1), -1.0, 1.0)
        return np.where(ok[..., None], coords + offset, fallback)

    @staticmethod
    def flip_back(heatmaps: torch.Tensor, shift: bool = True) -> torch.Tensor:
        """Heatmaps predicted on a mirrored crop -> heatmaps for the original crop.

        Mirrors the maps and swaps left/right joints. Mirroring a crop maps x to W - 1 - x,
        but mirroring a heatmap maps crop x to W - stride - x; ``shift`` moves the maps one
        heatmap pixel right to undo most of that offset (the SimpleBaselines convention).
        """
        perm = torch.as_tensor(flip_permutation(heatmaps.shape[1]), device=heatmaps.device)
        flipped = heatmaps.flip(3)[:, perm]
        if shift:
            flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=3)
        return flipped
