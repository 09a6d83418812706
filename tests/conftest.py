import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"


def pytest_configure(config):
    # One pytest-xdist worker per core: each keeps to its share of the cores, so that
    # PyTorch's thread pools do not oversubscribe them.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    # The longest tests first (their rough seconds on 2 cores, warm caches), so that the
    # parallel workers finish together.
    def seconds(item):
        marker = item.get_closest_marker("slow")
        return marker.kwargs.get("seconds", 60) if marker else 0

    items.sort(key=seconds, reverse=True)


@pytest.fixture
def coco_sample() -> Path:
    if not (COCO_SAMPLE / "person_keypoints_sample.json").is_file():
        pytest.skip("../shared/data/coco_sample is not present")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small synthetic COCO-format dataset, made once per test session."""
    from pose.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), train=24, val=9, seed=3)
