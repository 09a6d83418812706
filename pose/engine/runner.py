"""Training and testing runs, shared by tools/train.py, tools/test.py and the grid.

A run folder holds: config.yaml (the resolved config), latest.pth (every epoch, written
before the epoch's evaluation, so that no failure there loses training), best.pth
(best AP), epoch_N.pth (if configured), log.jsonl (one JSON object per logged step, epoch and
evaluation), tb/ (TensorBoard), results.json (COCO results of the last evaluation) and, once
the run is complete, metrics.json.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from pose.complexity import count_parameters
from pose.config import Config, check_same_run, save_config
from pose.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pose.engine.distributed import (DistInfo, barrier, broadcast_buffers, cleanup,
                                     init_distributed)
from pose.engine.loop import build_optimizer, build_scheduler, train_one_epoch
from pose.errors import PoseError
from pose.engine.tasks import make_task
from pose.estimator import AMP_DTYPES, resolve_device
from pose.utils import atomic_write_json

__all__ = ["run_test", "run_training"]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def make_loader(dataset, batch_size: int, train: bool, info: DistInfo, num_workers: int,
                seed: int, device: torch.device) -> DataLoader:
    """Shuffled by (seed, epoch) through a DistributedSampler even on one process, so the
    order depends only on the epoch: runs resume onto the same batches."""
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=train, seed=seed, drop_last=False)
    per_rank = len(dataset) // info.world_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda",
                      drop_last=train and per_rank >= batch_size)


class RunLog:
    """log.jsonl and TensorBoard scalars, written by rank 0 only."""

    def __init__(self, work_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = work_dir / "log.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(work_dir / "tb"))

    def __call__(self, kind: str, record: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "time": time.time(), **record}) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "iter", "step"):
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def say(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, flush=True)


def _set_threads(cfg: Config) -> None:
    if cfg.runtime.num_threads > 0:
        torch.set_num_threads(cfg.runtime.num_threads)


def run_training(cfg: Config, work_dir: str | Path, resume: bool = False) -> Optional[dict]:
    """Train and evaluate as configured; returns metrics.json's content on rank 0."""
    work_dir = Path(work_dir)
    device = resolve_device(cfg)
    info = init_distributed(device.type)
    try:
        return _train(cfg, work_dir, resume, device, info)
    finally:
        cleanup()


def _train(cfg: Config, work_dir: Path, resume: bool, device: torch.device,
           info: DistInfo) -> Optional[dict]:
    _set_threads(cfg)
    seed_everything(cfg.runtime.seed, cfg.runtime.deterministic)
    if resume:
        check_same_run(work_dir / "config.yaml", cfg)
    metrics_path = work_dir / "metrics.json"
    if resume and metrics_path.is_file():
        finished = json.loads(metrics_path.read_text())
        if finished.get("epochs") == cfg.train.epochs:
            say(info, f"{work_dir} is complete (metrics.json exists); nothing to do")
            return finished
    task = make_task(cfg, train=True)
    train_set, val_set = task.train_set, task.val_set
    model = task.build_model()
    work_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        save_config(cfg, work_dir / "config.yaml")  # with what the data fixed

    model = model.to(device)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    t = cfg.train
    train_loader = make_loader(train_set, t.batch_size, True, info, cfg.data.num_workers,
                               cfg.runtime.seed, device)
    val_loader = make_loader(val_set, cfg.eval.batch_size, False, info, cfg.data.num_workers,
                             cfg.runtime.seed, device)
    if len(train_loader) == 0:
        raise PoseError(f"training set {task.train_source} yields no batch of {t.batch_size}")
    iters_per_epoch = min(len(train_loader), t.max_iters_per_epoch or len(train_loader))
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, iters_per_epoch, t)
    amp_dtype = AMP_DTYPES[t.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")

    start_epoch, best_score, best_epoch, train_time = 0, -1.0, 0, 0.0
    latest = work_dir / "latest.pth"
    pending_eval = False
    if resume and latest.is_file():
        state = load_checkpoint(latest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_epoch = state["epoch"], state["best_epoch"]
        best_score = state.get("best_score", state.get("best_ap"))  # its older name
        train_time = state["train_time"]
        pending_eval = state.get("eval_pending", False)
        set_rng_state(state["rng"])
        say(info, f"resumed from {latest} after epoch {start_epoch}"
                  + (" (its evaluation first)" if pending_eval else ""))
    train_model = model
    if info.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    log = RunLog(work_dir, info.is_main)
    task.bind(model, device)
    say(info, f"training {task.describe()}: "
              f"{count_parameters(model) / 1e6:.2f}M params, {len(train_set)} train samples, "
              f"{iters_per_epoch} iterations x {t.epochs} epochs, "
              f"{info.world_size} process(es) on {device.type}, work dir {work_dir}")

    def save_latest(epoch: int, eval_pending: bool) -> None:
        if info.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "epoch": epoch, "best_score": best_score, "best_epoch": best_epoch,
                     "train_time": train_time, "rng": rng_state(), "config": cfg.to_dict(),
                     **task.checkpoint_extra(), "eval_pending": eval_pending}
            save_checkpoint(state, latest)
            if not eval_pending and t.checkpoint_interval and \
                    epoch % t.checkpoint_interval == 0:
                save_checkpoint(state, work_dir / f"epoch_{epoch}.pth")
        barrier(info)

    def evaluate_epoch(epoch: int) -> Optional[dict]:
        nonlocal best_score, best_epoch
        broadcast_buffers(model, info)
        stats = task.evaluate(val_loader, info, work_dir, progress=True)
        if info.is_main:
            log("eval", {"epoch": epoch, **stats}, epoch)
            say(info, f"epoch {epoch} evaluation:\n{task.format(stats)}")
            if stats[task.metric] > best_score:
                best_score, best_epoch = stats[task.metric], epoch
                save_checkpoint({"model": model.state_dict(), "epoch": epoch,
                                 task.metric: best_score, "config": cfg.to_dict(),
                                 **task.checkpoint_extra()}, work_dir / "best.pth")
        save_latest(epoch, eval_pending=False)
        return stats

    stats, evaluated = None, False
    try:
        if pending_eval:
            stats, evaluated = evaluate_epoch(start_epoch), True
        for epoch in range(start_epoch, t.epochs):
            train_loader.sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            epoch_stats = train_one_epoch(
                train_model, train_loader, optimizer, scheduler, scaler, device, epoch, t,
                amp_dtype, cfg.runtime.channels_last, show_progress=info.is_main,
                on_log=lambda r: log("train", r, r["step"]),
                log_interval=cfg.runtime.log_interval, loss_fn=task.loss,
                batch_transform=task.batch_transform)
            train_time += epoch_stats["epoch_time"]
            log("epoch", {"epoch": epoch + 1, **epoch_stats}, epoch + 1)
            say(info, f"epoch {epoch + 1}/{t.epochs}: loss {epoch_stats['loss']:.3e}, "
                      f"{epoch_stats['img_per_s']:.1f} img/s")
            due = (epoch + 1) % cfg.eval.interval == 0 or epoch + 1 == t.epochs
            save_latest(epoch + 1, eval_pending=due)
            if due:
                stats, evaluated = evaluate_epoch(epoch + 1), True
        if not evaluated:
            # Resumed after the last epoch's checkpoint but before metrics.json was written.
            stats = task.evaluate(val_loader, info, work_dir)
    finally:
        log.close()
    if not info.is_main:
        return None
    metrics = {"final": stats, "best": {task.metric: best_score, "epoch": best_epoch},
               "epochs": t.epochs, "train_time_s": round(train_time, 1),
               "params": count_parameters(model), "world_size": info.world_size,
               **task.metrics_extra()}
    atomic_write_json(metrics_path, metrics)
    return metrics


def run_test(cfg: Config, work_dir: str | Path, checkpoint: Optional[str] = None,
             oracle: bool = False, use_gt_boxes: Optional[bool] = None,
             det_file: Optional[str] = None) -> Optional[dict]:
    """Evaluate a checkpoint (or, with ``oracle``, the encoded targets) on the val set."""
    work_dir = Path(work_dir)
    device = resolve_device(cfg)
    info = init_distributed(device.type)
    try:
        _set_threads(cfg)
        state = None if oracle else load_checkpoint(checkpoint)  # before reading any data
        task = make_task(cfg, train=False, use_gt_boxes=use_gt_boxes, det_file=det_file,
                         oracle=oracle)
        dataset = task.val_set
        loader = make_loader(dataset, cfg.eval.batch_size, False, info, cfg.data.num_workers,
                             cfg.runtime.seed, device)
        model = None if oracle else task.load(checkpoint, state, device)
        task.bind(model, device, oracle=oracle)
        if info.is_main:
            work_dir.mkdir(parents=True, exist_ok=True)
        barrier(info)
        what = "the oracle (encoded targets)" if oracle else checkpoint
        setting, extra = task.test_setting(oracle)
        say(info, f"evaluating {what} on {setting}, {info.world_size} process(es)")
        metrics = {"checkpoint": None if oracle else str(checkpoint), "samples": len(dataset),
                   **extra}
        stats = task.evaluate(loader, info, work_dir, progress=True)
        if not info.is_main:
            return None
        metrics = {"final": stats, **metrics}
        atomic_write_json(work_dir / "metrics.json", metrics)
        say(info, task.format(stats))
        written = [work_dir / name for name in ("results.json", "metrics.json")
                   if (work_dir / name).is_file()]
        say(info, f"wrote {' and '.join(map(str, written))}")
        return metrics
    finally:
        cleanup()
