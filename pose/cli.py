"""Shared command-line plumbing: config arguments and one-line errors for expected mistakes."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Callable, Sequence

from pose.config import Config, load_config
from pose.errors import PoseError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable), "
                        "e.g. --set train.lr=5e-4 --set model.head.act=dyrelu_c")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config, and the process set up as it says (before any big allocation)."""
    from pose import allocator

    cfg = load_config(args.config, args.overrides)
    allocator.configure(cfg.runtime.keep_freed_memory)
    return cfg


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def setup_output() -> None:
    """The project's log lines (logger "pose": e.g. which DY-ReLU backend each device got) on
    stdout, and each warning on one line, without the source line Python adds."""
    logger = logging.getLogger("pose")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    warnings.formatwarning = _one_line_warning


def _clear_progress_bars() -> None:
    """Take unfinished progress bars off the screen, so that an error is its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.leave = False
        bar.close()


def run(main: Callable[[Sequence[str] | None], int | None],
        argv: Sequence[str] | None = None) -> None:
    """Run a tool's main; an expected mistake prints 'error: ...' and exits with status 2."""
    setup_output()
    try:
        code = main(argv)
    except (PoseError, FileNotFoundError) as error:
        _clear_progress_bars()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _clear_progress_bars()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
