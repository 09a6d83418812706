import contextlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Four real COCO val2017 images, their keypoints and detector boxes (its README says whence).
COCO_SAMPLE = ROOT / "tests" / "data" / "coco_sample"


def pytest_configure(config):
    # One pytest-xdist worker per core: each keeps to its share of the cores, so that
    # PyTorch's thread pools do not oversubscribe them.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def uses_compiled_backend(item) -> bool:
    """Whether a test runs the DY-ReLU layer's torch.compile'd backend (what CUDA and bfloat16
    take): parametrised with it, or marked ``compiled_backend``."""
    params = getattr(item, "callspec", None)
    return (item.get_closest_marker("compiled_backend") is not None
            or (params is not None and params.params.get("backend") == "compiled"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups
def pytest_collection_modifyitems(config, items):
    # The tests of the compiled backend share one worker (pytest-xdist's --dist loadgroup):
    # a graph that one of them compiles then serves the others from dynamo's cache in memory,
    # instead of each worker compiling it again (20-60 s a graph with an empty inductor cache).
    for item in items:
        if uses_compiled_backend(item):
            item.add_marker(pytest.mark.xdist_group("compiled_backend"))

    # The longest tests first (their rough seconds on 2 cores, warm caches), so that the
    # parallel workers finish together.
    def seconds(item):
        marker = item.get_closest_marker("slow")
        return marker.kwargs.get("seconds", 60) if marker else 0

    items.sort(key=seconds, reverse=True)


@pytest.fixture
def coco_sample() -> Path:
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small synthetic COCO-format dataset, made once per test session. The crowded scene:
    occluded joints, several people per image and crop, as in real data."""
    from pose.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), train=24, val=9, seed=3,
                    scene="crowded")


@contextlib.contextmanager
def tool_output_restored():
    """Undo what a tool run in this process sets up for its output (``pose.cli.setup_output``:
    the "pose" logger's handler, one-line warnings), so that later tests in the same worker
    see logging and warnings as pytest set them."""
    logger = logging.getLogger("pose")
    saved = list(logger.handlers), logger.propagate, logger.level, warnings.formatwarning
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]
        warnings.formatwarning = saved[3]


def load_tool(name: str):
    """``tools/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool_in_process(capfd, name: str, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``tools/<name>.py ARGS`` run in this process through
    the same ``pose.cli.run`` as its command line (exit codes, one-line errors), reading what
    reached the file descriptors; it spares each tool test a new interpreter's imports."""
    from pose import cli

    with tool_output_restored(), pytest.raises(SystemExit) as stop:
        cli.run(load_tool(name).main, [str(a) for a in args])
    out, err = capfd.readouterr()
    return stop.value.code, out, err
