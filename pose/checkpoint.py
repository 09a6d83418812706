"""Checkpoints written atomically and loaded with ``weights_only=True``.

A training checkpoint holds: model, optimizer, scheduler, scaler, epoch (completed),
best_score (the task's metric: AP, or top-1; ``best_ap`` in older ones), best_epoch, rng
(torch, CUDA, numpy and Python states as plain lists), config, and what the task adds (the
keypoint set, or the class names). ``load_backbone`` starts a pose backbone from a
classifier's checkpoint.
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


def load_backbone(backbone: torch.nn.Module, template: str, backbone_cfg) -> Path:
    """Load the backbone weights of a classifier checkpoint (``tools/train.py`` on a
    ``model.type: classifier`` config) into a pose model's ``backbone``: ``template`` is the
    path, where ``{backbone}`` stands for the backbone activation's name (one file per grid
    row). The checkpoint's width and activation must be ours, and its backbone tensors our
    backbone's, key for key and shape for shape; anything else is one ConfigError naming the
    key and both values."""
    from pose.activation_spec import activation_name, resolved_activation
    from pose.config import ConfigError

    path = Path(template.format(backbone=activation_name(backbone_cfg.act)))
    state = load_checkpoint(path)
    where = f"model.backbone.init {path}"
    stored = ((state.get("config") or {}).get("model") or {}) if isinstance(state, dict) else {}
    theirs = stored.get("backbone") or {}
    for key, ours, same in (
            ("width_mult", backbone_cfg.width_mult, lambda a, b: float(a) == float(b)),
            ("act", backbone_cfg.act,
             lambda a, b: resolved_activation(a) == resolved_activation(b))):
        if key in theirs and not same(theirs[key], ours):
            raise ConfigError(f"{where}: model.backbone.{key} is {theirs[key]!r} there, "
                              f"{ours!r} here")
    weights = {k: v for k, v in model_weights(state).items() if not k.startswith("classifier.")}
    expected = backbone.state_dict()
    for key, value in expected.items():
        if key not in weights:
            raise ConfigError(f"{where}: no tensor {key!r} (shape {tuple(value.shape)} here)")
        if weights[key].shape != value.shape:
            raise ConfigError(f"{where}: {key!r} has shape {tuple(weights[key].shape)} there, "
                              f"{tuple(value.shape)} here")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ConfigError(f"{where}: tensor {extra[0]!r} has no place in this backbone"
                          f"{f' ({len(extra) - 1} more)' if len(extra) > 1 else ''}")
    backbone.load_state_dict(weights)
    return path
