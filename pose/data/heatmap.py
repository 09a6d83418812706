"""Gaussian heatmap codec: keypoints in crop pixels <-> heatmaps at 1/stride resolution.

Heatmap pixel (u, v) stands for crop pixel (u * stride, v * stride).

Encoding (targets), ``encoding=``:
- ``reference`` (SimpleBaselines/HRNet, the paper's code base): the Gaussian's centre is the
  keypoint's heatmap position rounded as ``int(x + 0.5)`` (toward zero, so positions down to
  -1.5 round to 0); the target is a (2r + 1)-pixel patch of that Gaussian, r = 3 sigma, placed
  at ``int(centre - r)``; a joint keeps its weight unless that window lies wholly beyond the
  heatmap by the reference's integer test, even where none of the patch lands on the heatmap.
- ``unbiased``: the Gaussian is centred on the exact sub-pixel position, truncated at 3 sigma
  per axis; a joint keeps its weight while its centre is within 3 sigma of the heatmap
  (mmpose's unbiased encoding; it removes the rounding's quantisation error).

Decoding, ``decode=``: the argmax, then
- ``quarter`` (reference): a quarter pixel towards the higher neighbour on each axis, only
  when the peak is at least two pixels inside the heatmap on both axes; a peak whose value is
  not positive is put at (0, 0), as the reference's ``get_max_preds`` does;
- ``quarter_per_axis``: the quarter step on each axis whose neighbours both exist;
- ``dark``: the Taylor refinement of DARK (Zhang et al., CVPR 2020) on the log of a blurred
  heatmap, ``quarter_per_axis`` where the blur window does not fit.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch


ENCODINGS = ("reference", "unbiased")
DECODINGS = ("quarter", "quarter_per_axis", "dark")


class HeatmapCodec:
    def __init__(self, input_size, stride: int = 4, sigma: float = 2.0,
                 decode: str = "quarter", dark_kernel: int = 11,
                 encoding: str = "reference") -> None:
        """``input_size``: crop (height, width) in pixels; heatmaps are (height, width) / stride."""
        if decode not in DECODINGS:
            raise ValueError(f"decode must be one of {', '.join(DECODINGS)}, got {decode!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        height, width = input_size
        if height % stride or width % stride:
            raise ValueError(f"input size {height}x{width} is not divisible by stride {stride}")
        self.input_size = (height, width)
        self.heatmap_size = (height // stride, width // stride)
        self.stride, self.sigma, self.decode_mode = stride, sigma, decode
        self.dark_kernel, self.encoding = dark_kernel, encoding

    def encode(self, keypoints: np.ndarray, visible: np.ndarray):
        """(K, 2) crop-pixel keypoints and (K,) visibility -> heatmaps (K, h, w), weights (K,).

        A joint gets weight 0 when unlabelled or when its window misses the heatmap (each
        encoding's own test, see the module docstring); its heatmap is then all zero.
        """
        if self.encoding == "reference":
            return self._encode_reference(keypoints, visible)
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

    def _encode_reference(self, keypoints: np.ndarray, visible: np.ndarray):
        h, w = self.heatmap_size
        radius = 3.0 * self.sigma
        centre = np.trunc(np.asarray(keypoints, dtype=np.float64)[:, :2] / self.stride + 0.5)
        low, high = np.trunc(centre - radius), np.trunc(centre + radius + 1)  # window [low, high)
        inside = (low[:, 0] < w) & (low[:, 1] < h) & (high[:, 0] >= 0) & (high[:, 1] >= 0)
        weights = ((np.asarray(visible) > 0) & inside).astype(np.float32)
        # Pixel p of the window shows the patch's entry p - low; the patch's peak is its entry
        # floor((2r + 1) / 2), which is the rounded centre when r is a whole number.
        peak = np.floor((2 * radius + 1) / 2)

        def profile(length, axis):
            pixel = np.arange(length)[None, :]
            offset = pixel - low[:, axis:axis + 1] - peak
            window = (pixel >= low[:, axis:axis + 1]) & (pixel < high[:, axis:axis + 1])
            return np.exp(-offset ** 2 / (2 * self.sigma ** 2)) * window

        heatmaps = profile(h, 1)[:, :, None] * profile(w, 0)[:, None, :] * weights[:, None, None]
        return heatmaps.astype(np.float32), weights

    def decode(self, heatmaps: np.ndarray):
        """(N, K, h, w) heatmaps -> keypoints (N, K, 2) in crop pixels and scores (N, K)."""
        heatmaps = np.asarray(heatmaps, dtype=np.float32)
        n, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(n, k, h * w)
        index = flat.argmax(axis=2)
        scores = np.take_along_axis(flat, index[..., None], axis=2)[..., 0]
        coords = np.stack([index % w, index // w], axis=-1).astype(np.float64)  # (N, K, 2)
        if self.decode_mode == "quarter":
            coords = np.where(scores[..., None] > 0, coords, 0.0)
            coords = self._refine_quarter(heatmaps, coords, margin=2, both_axes=True)
        else:
            quarter = self._refine_quarter(heatmaps, coords, margin=1, both_axes=False)
            coords = (self._refine_dark(heatmaps, coords, fallback=quarter)
                      if self.decode_mode == "dark" else quarter)
        return coords * self.stride, scores

    @staticmethod
    def _refine_quarter(heatmaps: np.ndarray, coords: np.ndarray, margin: int,
                        both_axes: bool) -> np.ndarray:
        """A quarter-pixel step towards the higher neighbour on an axis where the peak lies in
        [margin, size - 2]; with ``both_axes``, on both axes or neither."""
        n, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(n, k, h * w)
        x, y = coords[..., 0].astype(int), coords[..., 1].astype(int)

        def at(xx, yy):
            idx = np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)
            return np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]

        interior_x = (x >= margin) & (x < w - 1)
        interior_y = (y >= margin) & (y < h - 1)
        if both_axes:
            interior_x = interior_y = interior_x & interior_y
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
    def flip_back(heatmaps: torch.Tensor, permutation, shift: bool = True) -> torch.Tensor:
        """Heatmaps predicted on a mirrored crop -> heatmaps for the original crop.

        Mirrors the maps and swaps left/right joints (``permutation``: the keypoint set's
        ``flip_permutation()``). Mirroring a crop maps x to W - 1 - x,
        but mirroring a heatmap maps crop x to W - stride - x; ``shift`` moves the maps one
        heatmap pixel right to undo most of that offset (the SimpleBaselines convention).
        """
        perm = torch.as_tensor(permutation, device=heatmaps.device)
        flipped = heatmaps.flip(3)[:, perm]
        if shift:
            flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=3)
        return flipped
