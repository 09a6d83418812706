from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"


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
