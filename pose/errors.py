"""Errors for expected user mistakes: the tools print them on one line, without a traceback."""


class PoseError(Exception):
    """Base class of expected mistakes (bad config, missing file, corrupt data)."""


class DataError(PoseError, ValueError):
    """A data file is missing, unreadable or not what it should be; the message names it."""
