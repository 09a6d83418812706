"""Shared command-line plumbing: config arguments and one-line errors for expected mistakes."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from pose.config import Config, load_config
from pose.errors import PoseError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable), "
                        "e.g. --set train.lr=5e-4 --set model.head.act=dyrelu_c")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def run(main: Callable[[Sequence[str] | None], int | None],
        argv: Sequence[str] | None = None) -> None:
    """Run a tool's main; an expected mistake prints 'error: ...' and exits with status 2."""
    try:
        code = main(argv)
    except (PoseError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
