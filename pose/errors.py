"""Errors for expected user mistakes: the tools print them on one line, without a traceback."""
from __future__ import annotations

import re

# How torch.utils.data re-raises a worker's exception in the main process: the exception's
# class, built from this text and the worker's whole traceback.
_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal "
                             r"Traceback", re.DOTALL)


def _unwrap(message: str, error_class: type) -> str:
    """The worker's own message out of a DataLoader's wrapper text (else the text as is)."""
    if not _WORKER_WRAPPER.match(message):
        return message
    marker = f"{error_class.__module__}.{error_class.__qualname__}: "
    at = message.rfind(marker)
    return message[at + len(marker):].strip() if at >= 0 else message


class PoseError(Exception):
    """Base class of expected mistakes (bad config, missing file, corrupt data).

    Raised in a DataLoader worker, it reaches the main process as the same one-line message
    as with ``num_workers: 0`` (torch rebuilds it from the worker's traceback text)."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(_unwrap(str(message), type(self)), *args)


class DataError(PoseError, ValueError):
    """A data file is missing, unreadable or not what it should be; the message names it."""


class DataWarning(UserWarning):
    """Data the project repaired or skipped, counted in one line."""
