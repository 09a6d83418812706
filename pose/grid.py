"""The N x N backbone/head activation grid (the paper's Table 2 for N = 4), over seeds.

Each (cell, seed) is an ordinary training run (tools/train.py --resume in
``OUT/<backbone>__<head>/seed_<seed>``, with ``runtime.seed`` set), so a grid is resumable
and idempotent: a run with a complete metrics.json is never run again, an interrupted one
resumes from its latest.pth, and a failing one is reported with its log while the others go
on. Runs go as local subprocesses (--jobs at a time, one GPU group each with --gpus) or as
Slurm jobs through submitit. ``pose.report`` turns the runs into the tables: mean ± std over
seeds per cell, and each cell's paired difference to a reference cell with its interval.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from pose.config import Config, ConfigError, check_same_run, load_config
from pose.activation_spec import parse_activation, resolved_activation
from pose.report import write_tables

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def parse_acts(text: str) -> list[Any]:
    """'relu,dyrelu_c' or a YAML list ('[relu, {name: dyrelu_c, k: 3}]') -> specs."""
    text = text.strip()
    specs = yaml.safe_load(text) if text.startswith("[") else \
        [part.strip() for part in text.split(",") if part.strip()]
    for spec in specs:
        parse_activation(spec)  # raises ValueError naming the bad name or option
    return specs


def act_label(spec: Any) -> str:
    """A short folder-safe name: 'dyrelu_c', or 'dyrelu_c-k3-reduction8' with options."""
    name, options = parse_activation(spec)
    parts = [name] + [f"{key}{value}" for key, value in sorted(options.items())]
    return re.sub(r"[^A-Za-z0-9_.-]", "", "-".join(parts))


# Extra train-step time one side (backbone or head) adds with this activation, relative to
# ReLU (the synthetic grid's measured cell times). Only used to start the slowest cells first,
# so that the last cells to finish are short ones and no core idles for long.
SLOWDOWN = {"dyrelu_a": 0.25, "dyrelu_b": 0.3, "dyrelu_c": 0.45, "se_relu": 0.1, "maxout": 0.8}


def estimated_cost(cell: "Cell") -> float:
    return 1.0 + sum(SLOWDOWN.get(parse_activation(spec)[0], 0.0)
                     for spec in (cell.backbone, cell.head) if spec is not None)


@dataclass
class Cell:
    """One training run of the grid: a (backbone, head) pairing with one seed (a classifier's
    run: its activation as ``backbone``, no head)."""
    backbone: Any
    head: Any
    folder: Path
    overrides: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def pair(self) -> str:
        return self.folder.parent.name

    @property
    def name(self) -> str:
        return f"{self.pair}/{self.folder.name}"

    @property
    def log_path(self) -> Path:
        return self.folder / "train.log"

    def metrics(self) -> dict:
        """The cell's metrics.json, or {} while there is none (or only a broken one)."""
        path = self.folder / "metrics.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def is_complete(self, epochs: int, metrics: Optional[dict] = None) -> bool:
        metrics = self.metrics() if metrics is None else metrics
        return metrics.get("epochs") == epochs


def grid_seeds(cfg: Config, seeds: Optional[int] = None) -> list[int]:
    """The seeds of every cell: ``runtime.seed`` and the next ones, ``grid.seeds`` (or
    ``seeds``) in all."""
    count = cfg.grid.seeds if seeds is None else seeds
    if count < 1:
        raise ConfigError(f"the grid needs at least one seed, got {count}")
    return [cfg.runtime.seed + i for i in range(count)]


def make_cells(acts: Sequence[Any], out: Path, overrides: Sequence[str],
               seeds: Sequence[int] = (0,), classifier: bool = False) -> list[Cell]:
    """The runs, pairing-major then seed (a pairing's seeds side by side). A classifier has
    no head: one run per activation (Table 1), in OUT/<activation>/seed_<s>."""
    cells = []
    if classifier:
        for act in acts:
            for seed in seeds:
                cells.append(Cell(act, None, out / act_label(act) / f"seed_{seed}",
                                  list(overrides) + [f"model.backbone.act={json.dumps(act)}",
                                                     f"runtime.seed={seed}"], seed))
        return cells
    for backbone in acts:
        for head in acts:
            pair = out / f"{act_label(backbone)}__{act_label(head)}"
            for seed in seeds:
                cell_overrides = list(overrides) + [
                    f"model.backbone.act={json.dumps(backbone)}",
                    f"model.head.act={json.dumps(head)}", f"runtime.seed={seed}"]
                cells.append(Cell(backbone, head, pair / f"seed_{seed}", cell_overrides, seed))
    return cells


def train_command(config: str | Path, cell: Cell, gpus_per_cell: int = 1,
                  port: Optional[int] = None) -> list[str]:
    command = [str(TOOLS / "train.py"), "--config", str(config), "--work-dir", str(cell.folder),
               "--resume"]
    for override in cell.overrides:
        command += ["--set", override]
    if gpus_per_cell > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run",
                    f"--nproc_per_node={gpus_per_cell}", f"--master_port={port or 29500}"]
        return launcher + command
    return [sys.executable] + command


def run_cell_process(command: list[str], log_path: str, env: dict[str, str]) -> int:
    """Run one cell's training, its output going to its log file; returns the exit code."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **env}).returncode


class GridLog:
    """grid_log.jsonl: one line per cell event (skipped, started, finished, failed)."""

    def __init__(self, path: Path) -> None:
        self.path, self.lock = path, threading.Lock()

    def __call__(self, event: str, cell: Cell, **extra) -> None:
        record = {"time": time.time(), "event": event, "cell": cell.name, **extra}
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        detail = f" ({extra['reason']})" if "reason" in extra else ""
        print(f"[grid] {cell.name}: {event}{detail}", flush=True)


def _cell_env(gpus: Optional[Sequence[str]], threads: int) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def run_local(config, cells: list[Cell], jobs: int, gpus: Optional[list[str]],
              gpus_per_cell: int, log: GridLog) -> dict[str, str]:
    """Run cells as subprocesses, ``jobs`` at a time; returns {cell name: status}."""
    groups = None
    if gpus:
        groups = [gpus[i:i + gpus_per_cell] for i in range(0, len(gpus), gpus_per_cell)]
        groups = [g for g in groups if len(g) == gpus_per_cell]
        jobs = min(jobs, len(groups))
    free = list(range(jobs))
    lock = threading.Lock()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    status: dict[str, str] = {}

    def work(cell: Cell) -> None:
        with lock:
            slot = free.pop()
        try:
            group = groups[slot] if groups else None
            port = 29500 + 17 * slot
            command = train_command(config, cell, gpus_per_cell if group else 1, port)
            log("started", cell, log=str(cell.log_path), gpus=group)
            code = run_cell_process(command, str(cell.log_path), _cell_env(group, threads))
            status[cell.name] = "finished" if code == 0 else "failed"
            if code == 0:
                log("finished", cell)
            else:
                log("failed", cell, reason=f"exit code {code}, see {cell.log_path}")
        finally:
            with lock:
                free.append(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # slowest first, see SLOWDOWN
        list(pool.map(work, sorted(cells, key=estimated_cost, reverse=True)))
    return status


def run_submitit(config, cells: list[Cell], executor, gpus_per_cell: int,
                 log: GridLog) -> dict[str, str]:
    """Submit one job per cell through a submitit executor (Slurm, or local for tests)."""
    status: dict[str, str] = {}
    submitted = []
    with executor.batch():
        for cell in cells:
            # A multi-GPU cell runs torchrun inside its one-node job; ports differ by cell
            # in case two cells share a node.
            port = 29500 + sum(map(ord, cell.name)) % 2000
            command = train_command(config, cell, gpus_per_cell, port)
            job = executor.submit(run_cell_process, command, str(cell.log_path),
                                  {"PYTHONUNBUFFERED": "1"})
            submitted.append((cell, job))
    for cell, job in submitted:
        log("started", cell, log=str(cell.log_path), job_id=str(job.job_id))
    for cell, job in submitted:
        try:
            code = job.result()
        except Exception as error:  # the job itself died (node failure, timeout, ...)
            code, reason = -1, f"{type(error).__name__}: {str(error).splitlines()[0]}"
        else:
            reason = f"exit code {code}, see {cell.log_path}"
        status[cell.name] = "finished" if code == 0 else "failed"
        if code == 0:
            log("finished", cell)
        else:
            log("failed", cell, reason=reason)
    return status


def slurm_executor(out: Path, gpus_per_cell: int, timeout_min: int, partition: Optional[str]):
    import submitit

    executor = submitit.AutoExecutor(folder=str(out / "slurm" / "%j"), cluster="slurm")
    params = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_cell,
              "tasks_per_node": 1, "cpus_per_task": max(4, 8 * gpus_per_cell),
              "name": "dyrelu-grid"}
    if partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    return executor


def run_grid(config: str | Path, acts: Optional[Sequence[Any]], out: str | Path,
             overrides: Sequence[str] = (), jobs: int = 1, gpus: Optional[list[str]] = None,
             gpus_per_cell: int = 1, launcher: str = "local", executor=None,
             slurm_timeout_min: int = 72 * 60, slurm_partition: Optional[str] = None,
             seeds: Optional[int] = None, reference: Optional[Sequence[Any]] = None) -> dict:
    """Run every (cell, seed) that is not complete, then write the tables; returns
    table2.json. ``acts`` None takes the config's grid.acts, ``seeds`` None its grid.seeds;
    ``reference``: the (backbone, head) cell the paired differences are taken to (default:
    ReLU/ReLU, else the first cell)."""
    out = Path(out)
    cfg = load_config(config, overrides)
    acts = cfg.grid.acts if acts is None else acts
    classifier = cfg.model.type == "classifier"
    reference = check_reference(acts, reference, classifier)
    cells = make_cells(acts, out, overrides, grid_seeds(cfg, seeds), classifier)
    log = GridLog(out / "grid_log.jsonl")
    todo = []
    for cell in cells:
        if cell.is_complete(cfg.train.epochs) and _same_run(config, cell):
            log("skipped", cell, reason="complete")
        else:
            todo.append(cell)
    status = {cell.name: "finished" for cell in cells if cell not in todo}
    if todo:
        if launcher == "local" and executor is None:
            status.update(run_local(config, todo, jobs, gpus, gpus_per_cell, log))
        else:
            if executor is None:
                executor = slurm_executor(out, gpus_per_cell, slurm_timeout_min,
                                          slurm_partition)
            status.update(run_submitit(config, todo, executor, gpus_per_cell, log))
    if classifier:
        from pose.report_table1 import write_table1

        return write_table1(cfg, acts, cells, status, out, reference)
    return write_tables(cfg, acts, cells, status, out, reference)


def _same_run(config: str | Path, cell: Cell) -> bool:
    """Whether the cell's folder was written by this config: a folder of another config is
    run again, and its train.py --resume refuses it with the keys that differ, in the cell's
    log."""
    try:
        check_same_run(cell.folder / "config.yaml", load_config(config, cell.overrides))
    except ConfigError:
        return False
    return True


def check_reference(acts: Sequence[Any], reference: Optional[Sequence[Any]],
                    classifier: bool = False):
    """The reference cell: given (each spec one of ``acts``), or ReLU/ReLU, or the first; for
    a classifier one activation (ReLU, or the first)."""
    if classifier:
        if reference is None:
            return "relu" if "relu" in acts else acts[0]
        if len(reference) != 1 or reference[0] not in acts:
            raise ConfigError(f"--reference {list(reference)} must be one of the "
                              f"activations: {list(acts)}")
        return reference[0]
    if reference is None:
        return ("relu", "relu") if "relu" in acts else (acts[0], acts[0])
    if len(reference) != 2 or any(spec not in acts for spec in reference):
        raise ConfigError(f"--reference {list(reference)} must be two of the grid's "
                          f"activations (backbone, head): {list(acts)}")
    return tuple(reference)


# Person instances the reference's COCO train2017 loader keeps (SimpleBaselines/HRNet logs:
# "load 149813 samples"), for the budget of a grid whose data is not on this machine.
COCO_TRAIN_SAMPLES = 149813


# Images in ImageNet's training set (ILSVRC-2012), for the budget of a classifier sweep whose
# data is not on this machine.
IMAGENET_TRAIN_IMAGES = 1281167


def _table1_complexity(cfg: Config, acts: Sequence[Any]) -> list[str]:
    """Each activation's parameters and MAdds, the paper's beside them where it has the row."""
    from pose.data.build import data_path
    from pose.report_table1 import cost, is_imagenet_setting, paper_row

    folder = data_path(cfg, cfg.data.train_images)
    classes = sum(p.is_dir() for p in folder.iterdir()) if folder.is_dir() else None
    lines = ["| activation | #Param | MAdds | paper #Param | paper MAdds |", "|---|---|---|---|---|"]
    for act in acts:
        ours, paper = cost(cfg, act, classes), paper_row(act)
        theirs = (f"{paper['params'] / 1e6:.1f}M | {paper['madds'] / 1e6:.1f}M"
                  if paper and is_imagenet_setting(cfg) else "- | -")
        lines.append(f"| {act_label(act)} | {ours['params'] / 1e6:.2f}M | "
                     f"{ours['madds'] / 1e6:.1f}M | {theirs} |")
    return lines


def train_samples(cfg: Config) -> tuple[Optional[int], str]:
    """(training samples per epoch, where the figure comes from)."""
    from pose.data.build import data_path
    from pose.data.coco import load_keypoint_file

    if cfg.model.type == "classifier":
        folder = data_path(cfg, cfg.data.train_images)
        if folder.is_dir():
            return sum(1 for p in folder.glob("*/*") if p.is_file()), f"counted in {folder}"
        if "imagenet" in cfg.data.root.lower():
            return IMAGENET_TRAIN_IMAGES, "ImageNet's training set"
        return None, f"{folder} is not on this machine"

    path = data_path(cfg, cfg.data.train_ann)
    if path.is_file():
        return load_keypoint_file(path)[1].people, f"counted in {path}"
    if cfg.data.train_ann.endswith("person_keypoints_train2017.json"):
        return COCO_TRAIN_SAMPLES, "COCO train2017 as the reference loads it"
    return None, f"{path} is not on this machine"


def describe(config: str | Path, acts: Optional[Sequence[Any]], out: str | Path,
             overrides: Sequence[str] = (), seeds: Optional[int] = None,
             throughput: Optional[float] = None) -> str:
    """The --dry-run listing: each run's resolved activations and folder, the number of runs,
    and with ``throughput`` (training img/s of one run) the compute the grid needs."""
    out = Path(out)
    cfg: Config = load_config(config, overrides)
    acts = cfg.grid.acts if acts is None else acts
    seed_list = grid_seeds(cfg, seeds)
    classifier = cfg.model.type == "classifier"
    cells = make_cells(acts, out, overrides, seed_list, classifier)
    if classifier:
        lines = [f"{len(acts)} activations (Table 1) from {config}: {cfg.train.epochs} epochs, "
                 f"input {cfg.data.image_size[0]}x{cfg.data.image_size[1]}, data "
                 f"{cfg.data.root}; seeds {seed_list}: {len(cells)} runs",
                 *_table1_complexity(cfg, acts)]
    else:
        lines = [f"{len(acts)}x{len(acts)} grid from {config}: {cfg.train.epochs} epochs, "
                 f"input {cfg.data.input_size[0]}x{cfg.data.input_size[1]}, data "
                 f"{cfg.data.root}; seeds {seed_list}: {len(cells)} runs"]
    for cell in cells:
        head = "" if classifier else f"    head:     {resolved_activation(cell.head)}\n"
        lines.append(f"{cell.name}\n    backbone: {resolved_activation(cell.backbone)}\n"
                     f"{head}    folder:   {cell.folder}"
                     f"{'  (complete)' if cell.is_complete(cfg.train.epochs) else ''}")
    todo = sum(not cell.is_complete(cfg.train.epochs) for cell in cells)
    samples, source = train_samples(cfg)
    lines.append(f"runs: {len(cells)} ({todo} still to train); training samples per epoch: "
                 f"{samples if samples is not None else 'unknown'} ({source})")
    if throughput:
        if samples is None:
            lines.append("budget: unknown without the training set's size")
        else:
            hours = todo * cfg.train.epochs * samples / throughput / 3600
            lines.append(f"budget at {throughput:g} img/s per run: {hours:,.1f} device-hours "
                         f"(one device or GPU group per run; {cfg.train.epochs} epochs x "
                         f"{samples} samples x {todo} runs, training only: evaluations add "
                         f"to it)")
    return "\n".join(lines)

