"""Checkpoints written atomically and loaded with ``weights_only=True``.

A training checkpoint holds: model, optimizer, scheduler, scaler, epoch (completed), best_ap,
best_epoch, rng (torch, CUDA, numpy and Python states as plain lists) and config.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pose.errors import PoseError
from pose.utils import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(Path(path), lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise PoseError(f"checkpoint {path} is a folder, not a file (a run folder holds "
                        f"best.pth and latest.pth)")
    if not path.is_file():
        raise PoseError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, not a traceback
        raise PoseError(f"checkpoint {path} could not be read: {error}") from None


def model_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict of a training checkpoint or of a bare state dict."""
    return checkpoint["model"] if "model" in checkpoint else checkpoint


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
