"""One training epoch, with the optimizer, schedule and loss it uses."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

import torch
from torch import nn

from pose.config import TrainConfig
from pose.errors import PoseError

LossFn = Callable[[torch.Tensor, dict, torch.device], torch.Tensor]  # (output, batch, device)


class NonFiniteLossError(PoseError):
    """The loss became NaN or infinite; the message names the iteration."""


def heatmap_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                 loss_weight: float = 0.5) -> torch.Tensor:
    """``loss_weight`` times the mean squared error over (N, K, h, w) of the heatmaps, each
    joint's map multiplied by its weight (N, K) first: the reference's loss at 0.5."""
    weights = weights[:, :, None, None]
    return loss_weight * ((predicted.float() - target) * weights).square().mean()


def heatmap_batch_loss(cfg: TrainConfig) -> LossFn:
    """The pose task's loss: ``heatmap_loss`` of a batch's heatmaps and joint weights."""
    def loss(output, batch, device):
        return heatmap_loss(output, batch["heatmaps"].to(device, non_blocking=True),
                            batch["weights"].to(device, non_blocking=True), cfg.loss_weight)

    return loss


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Two groups: DY-ReLU hyper-function parameters at lr * hyper_lr_mult, the rest at lr."""
    from pose.models.activations import DyReLU

    hyper = {id(p) for m in model.modules() if isinstance(m, DyReLU) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in hyper], "lr": cfg.lr},
              {"params": [p for p in params if id(p) in hyper],
               "lr": cfg.lr * cfg.hyper_lr_mult}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = parameter_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def lr_factor(iteration: int, iters_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up from warmup_ratio over warmup_iters, times the schedule's decay.

    step: gamma per milestone (an epoch) passed, as the reference code bases; cosine: half a
    cosine from 1 at iteration 0 to 0 at the end of the last epoch.
    """
    warm = 1.0
    if iteration < cfg.warmup_iters:
        warm = cfg.warmup_ratio + (1 - cfg.warmup_ratio) * iteration / cfg.warmup_iters
    if cfg.schedule == "cosine":
        progress = min(iteration / max(cfg.epochs * iters_per_epoch, 1), 1.0)
        return warm * 0.5 * (1 + math.cos(math.pi * progress))
    epoch = iteration // max(iters_per_epoch, 1)
    return warm * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


def build_scheduler(optimizer, iters_per_epoch: int, cfg: TrainConfig):
    """A per-iteration LambdaLR: step it after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, iters_per_epoch, cfg))


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, scaler, device: torch.device,
                    epoch: int, cfg: TrainConfig, autocast_dtype: Optional[torch.dtype],
                    channels_last: bool = False, show_progress: bool = True,
                    on_log: Optional[Callable[[dict], None]] = None, log_interval: int = 50,
                    loss_fn: Optional[LossFn] = None,
                    batch_transform: Optional[Callable[[dict], dict]] = None
                    ) -> dict[str, float]:
    """Train for one epoch (or ``cfg.max_iters_per_epoch`` iterations); returns mean loss etc.

    ``loss_fn(output, batch, device)`` is the task's loss (default: the heatmap loss of a
    pose batch); ``batch_transform`` changes each collated batch first (MixUp)."""
    model.train()
    loss_fn = loss_fn or heatmap_batch_loss(cfg)
    total = len(loader) if not cfg.max_iters_per_epoch else min(len(loader),
                                                                  cfg.max_iters_per_epoch)
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                        dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    loss_sum, images_seen, start = 0.0, 0, time.perf_counter()
    data_start = start
    for i, batch in enumerate(loader):
        if i >= total:
            break
        data_time = time.perf_counter() - data_start
        if batch_transform is not None:
            batch = batch_transform(batch)
        images = batch["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            output = model(images)
        loss = loss_fn(output, batch, device)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, iteration {i + 1} "
                f"(global step {scheduler.last_epoch + 1}); stopping")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        loss_value = loss.item()
        loss_sum += loss_value * len(images)
        images_seen += len(images)
        elapsed = time.perf_counter() - start
        stats = {"loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                 "data_time": data_time, "img_per_s": images_seen / max(elapsed, 1e-9)}
        if progress is not None:
            progress.set_postfix(loss=f"{loss_value:.2e}", lr=f"{stats['lr']:.1e}",
                                 data=f"{data_time:.2f}s", ips=f"{stats['img_per_s']:.1f}",
                                 refresh=False)
            progress.update()
        if on_log is not None and (i + 1) % log_interval == 0:
            on_log({"epoch": epoch + 1, "iter": i + 1, "step": scheduler.last_epoch, **stats})
        data_start = time.perf_counter()
    if progress is not None:
        progress.close()
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum / max(images_seen, 1), "img_per_s": images_seen / max(elapsed, 1e-9),
            "epoch_time": elapsed, "iterations": min(total, len(loader))}

