"""YAML configs loaded into validated dataclasses.

A file may name one ``_base_`` file (path relative to itself) whose values it overrides.
Unknown keys are errors naming the key and the closest valid one; values are checked
against the field's type. ``--set a.b=value`` overrides go through the same checks; the
value is read as YAML (``--set model.backbone.act="{name: dyrelu_c, k: 3}"``).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterable, Optional

import yaml

from pose.activation_spec import parse_activation
from pose.errors import PoseError


# The reference's half-body rule takes the upper body when a standard normal draw is below 0.5.
REFERENCE_UPPER_BODY_PROB = NormalDist().cdf(0.5)  # about 0.69


class ConfigError(PoseError, ValueError):
    """A config file or override is wrong; the message names the key and value at fault."""


@dataclass
class BackboneConfig:
    width_mult: float = 0.5
    act: Any = "relu"  # activation slot spec, see pose.models.activations
    final_conv: bool = True  # keep MobileNetV2's last 1x1 conv (1280 channels), as mmpose
    # pose: start from a classifier checkpoint's backbone ({backbone}: the activation's name)
    init: Optional[str] = None


@dataclass
class HeadConfig:
    act: Any = "relu"
    channels: list[int] = field(default_factory=lambda: [128, 64, 32])
    blocks_per_stage: int = 2
    expand_ratio: float = 4.0


@dataclass
class ModelConfig:
    type: str = "pose"  # "pose" (TopDownPoseNet) or "classifier" (ImageNet-style MobileNetV2)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_keypoints: Optional[int] = None  # None: the data's keypoint set (checked if given)
    num_classes: Optional[int] = None  # classifier: None = the data's class folders (1000)
    dropout: float = 0.2  # classifier: before its last linear layer


@dataclass
class DataConfig:
    root: str = "data/coco"  # other data paths are relative to it
    train_ann: str = "annotations/person_keypoints_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/person_keypoints_val2017.json"
    val_images: str = "val2017"
    # detector boxes for evaluation; null: none (evaluate on GT boxes, eval.use_gt_boxes)
    det_file: Optional[str] = ("person_detection_results/"
                               "COCO_val2017_detections_AP_H_56_person.json")
    det_score_threshold: float = 0.0
    input_size: list[int] = field(default_factory=lambda: [256, 192])  # crop (height, width)
    heatmap_stride: int = 4
    sigma: float = 2.0
    # Conventions of the paper's code base (SimpleBaselines/HRNet) by default; README,
    # "Fidelity to the reference pipeline". unbiased: Gaussians at the exact sub-pixel position.
    target_encoding: str = "reference"  # reference | unbiased
    crop_geometry: str = "reference"  # reference (box centre -> W/2) | centred (-> (W-1)/2)
    clip_detection_boxes: bool = False  # the reference crops from the detector's raw box
    drop_zero_size_boxes: bool = False  # the reference crops boxes of zero width or height
    padding: float = 1.25  # box enlargement before cropping
    oks_sigmas: Optional[list[float]] = None  # for keypoints other than COCO's names
    skip_damaged_images: bool = False  # leave out truncated image files (warned) or refuse
    # Training augmentation, the reference's rules (pose.data.coco.Augmentation).
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_upper_prob: float = REFERENCE_UPPER_BODY_PROB
    half_body_centre: str = "mean"  # mean of the chosen joints | box: middle of their extent
    scale_factor: float = 0.35  # scale drawn in [1 - f, 1 + f]
    rotation_factor: float = 45.0  # degrees: N(0, f) ...
    rotation_clip: float = 2.0  # ... clipped to +-clip * f
    rotation_prob: float = 0.6
    photometric: bool = False  # albumentations colour jitter (the reference has none)
    num_workers: int = 4
    # Classifier only (pose.data.classification): train_images and val_images are folders of
    # class folders.
    image_size: list[int] = field(default_factory=lambda: [224, 224])  # crop (h, w)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # of the image area
    color_jitter: float = 0.4  # brightness, contrast and saturation
    mixup_alpha: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off
    val_resize: int = 256  # shorter side before the centre crop


@dataclass
class TrainConfig:
    epochs: int = 210
    batch_size: int = 32  # per process
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    hyper_lr_mult: float = 1.0  # lr multiplier for DY-ReLU's hyper functions (fc1, fc2, spatial conv)
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    schedule: str = "step"  # step: times gamma at each milestone | cosine: to 0 at the end
    milestones: list[int] = field(default_factory=lambda: [170, 200])  # epochs; step only
    gamma: float = 0.1
    amp: str = "none"  # none | fp16 | bf16 (CUDA only)
    sync_bn: bool = False
    max_iters_per_epoch: int = 0  # 0 = the whole epoch; small values for smoke tests
    checkpoint_interval: int = 0  # keep epoch_N.pth every N epochs; 0 = only latest/best
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    loss_weight: float = 0.5  # the reference's 0.5 * MSE of the weighted heatmaps; 1 = MSE


@dataclass
class EvalConfig:
    interval: int = 10  # evaluate every N epochs, and always after the last
    batch_size: int = 64
    use_gt_boxes: bool = False  # False: data.det_file boxes
    flip_test: bool = True
    shift_heatmap: bool = True
    decode: str = "quarter"  # quarter (reference border rule) | quarter_per_axis | dark
    keypoint_score_threshold: float = 0.2  # rescoring: mean of keypoint scores above this
    oks_nms_threshold: float = 0.9


@dataclass
class RuntimeConfig:
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda
    log_interval: int = 50
    channels_last: bool = False
    num_threads: int = 0  # torch CPU threads; 0 = PyTorch's default
    keep_freed_memory: bool = True  # glibc keeps freed memory for reuse (pose/allocator.py)


@dataclass
class GridConfig:
    # Activation specs of tools/grid.py's rows (backbone) and columns (head); --acts overrides.
    acts: list[Any] = field(default_factory=lambda: ["relu", "dyrelu_a", "dyrelu_b", "dyrelu_c"])
    seeds: int = 1  # runs per cell, seeded runtime.seed, runtime.seed + 1, ...; --seeds overrides


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    grid: GridConfig = field(default_factory=GridConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "model.type": ("pose", "classifier"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.schedule": ("step", "cosine"),
    "train.amp": ("none", "fp16", "bf16"),
    "data.target_encoding": ("reference", "unbiased"),
    "data.crop_geometry": ("reference", "centred"),
    "eval.decode": ("quarter", "quarter_per_axis", "dark"),
    "runtime.device": ("auto", "cpu", "cuda"),
}


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Return value converted to the field's type, or raise ConfigError naming key and value."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in typing.get_args(annotation) if a is not type(None)][0]
        return _check_value(key, value, inner)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            item = getattr(item_type, "__name__", str(item_type))
            raise ConfigError(f"config key '{key}': expected a list of {item}, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {getattr(annotation, '__name__', annotation)}"
                      f", got {value!r} ({type(value).__name__})")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else \
                f"; valid keys: {', '.join(prefix + n for n in names)}"
            raise ConfigError(f"unknown config key '{full}'{hint}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}': expected a mapping, got {value!r}")
            kwargs[key] = _build(annotation, value, f"{full}.")
        else:
            kwargs[key] = _check_value(full, value, annotation)
            allowed = CHOICES.get(full)
            if allowed and kwargs[key] not in allowed:
                raise ConfigError(f"config key '{full}': {value!r} is not one of "
                                  f"{', '.join(allowed)}")
    return cls(**kwargs)


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("act",):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {error.start}: "
                          f"{error.reason}); is it a YAML file?") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(values).__name__}")
    base = values.pop("_base_", None)
    if base is None:
        return values
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"config file {path}: _base_ cycle through {base_path}")
    return _merge(_read_yaml(base_path, seen + (base_path,)), values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict, overrides: Iterable[str]) -> dict:
    values = copy.deepcopy(values)
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
        node[path[-1]] = value
    return values


def config_from_dict(values: dict) -> Config:
    config = _build(Config, values, "")
    if not config.grid.acts:
        raise ConfigError("config key 'grid.acts': needs at least one activation spec")
    specs = [("model.backbone.act", config.model.backbone.act),
             ("model.head.act", config.model.head.act)]
    specs += [(f"grid.acts[{i}]", spec) for i, spec in enumerate(config.grid.acts)]
    for key, spec in specs:
        try:
            parse_activation(spec)
        except ValueError as error:
            raise ConfigError(f"config key '{key}': {error}") from None
    if config.model.type == "pose":
        size = config.data.input_size
        if len(size) != 2 or any(v <= 0 or v % 32 for v in size):
            raise ConfigError(f"config key 'data.input_size': {size} must be [height, width], "
                              f"each a positive multiple of 32 (the backbone's stride)")
    return config


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (with its _base_), apply ``key=value`` overrides and validate."""
    values = _read_yaml(Path(path)) if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides))


def save_config(config: Config, path: str | Path) -> None:
    from pose.utils import atomic_write_text  # local import: utils imports nothing from here

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


# Keys that may change between the start of a run and its resumption: where the files are,
# how fast it runs and how it logs. Everything else (model, data pipeline, schedule,
# evaluation, seed) decides the run's result.
_RUN_INDEPENDENT = {"model.num_keypoints", "data.root", "data.train_ann", "data.train_images",
                    "data.val_ann", "data.val_images", "data.det_file", "data.num_workers",
                    "train.checkpoint_interval", "eval.batch_size", "runtime.device",
                    "runtime.log_interval", "runtime.channels_last", "runtime.num_threads",
                    "runtime.keep_freed_memory"}


def _flat(values: dict) -> dict:
    return {f"{section}.{key}": value for section, fields in values.items() if section != "grid"
            and isinstance(fields, dict) for key, value in fields.items()}


def check_same_run(saved_config: Path, cfg: Config) -> None:
    """Refuse to resume (or to call complete) a run folder that another config started: its
    checkpoint and metrics would pass for this config's."""
    if not saved_config.is_file():
        return
    before = _flat(yaml.safe_load(saved_config.read_text()) or {})
    now = _flat(json.loads(json.dumps(cfg.to_dict())))  # tuples as YAML reads them: lists
    # A key the saved config lacks came after the run started; its default is what the code
    # did before the key existed, so only another value makes it another run.
    defaults = _flat(json.loads(json.dumps(Config().to_dict())))
    before.update({key: defaults[key] for key in now.keys() - before.keys() if key in defaults})
    changed = [f"{key}: {before.get(key)!r} there, {now.get(key)!r} now"
               for key in sorted(set(before) | set(now))
               if key not in _RUN_INDEPENDENT and before.get(key) != now.get(key)]
    if changed:
        raise ConfigError(f"{saved_config.parent} holds a run of another config ("
                          + "; ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
                          + "): resuming it would mix the two. Use another work dir (or grid "
                          "--out), or remove that folder to start again")
