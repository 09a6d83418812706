import numpy as np
import pytest

from pose.data.heatmap import HeatmapCodec


@pytest.mark.parametrize("mode", ["quarter_per_axis", "dark"])
def test_unbiased_encode_decode_error_is_below_half_a_heatmap_pixel(mode):
    codec = HeatmapCodec((256, 192), stride=4, sigma=2.0, decode=mode, encoding="unbiased")
    rng = np.random.default_rng(0)
    # Crop pixels whose heatmap position is at least one pixel inside the heatmap's border.
    keypoints = rng.uniform([4, 4], [184, 248], (64, 17, 2))
    encoded = [codec.encode(k, np.ones(17)) for k in keypoints]
    heatmaps = np.stack([h for h, _ in encoded])
    assert heatmaps.shape == (64, 17, 64, 48)
    assert all((w == 1).all() for _, w in encoded)
    decoded, scores = codec.decode(heatmaps)
    error = np.linalg.norm(decoded - keypoints, axis=-1) / codec.stride  # heatmap pixels
    assert error.max() < 0.5
    assert (scores > 0.5).all()


def test_dark_decoding_is_more_precise_than_quarter_offset():
    rng = np.random.default_rng(1)
    keypoints = rng.uniform([20, 20], [172, 236], (32, 17, 2))  # away from the border
    errors = {}
    for mode in ("quarter", "quarter_per_axis", "dark"):
        codec = HeatmapCodec((256, 192), decode=mode, encoding="unbiased")
        heatmaps = np.stack([codec.encode(k, np.ones(17))[0] for k in keypoints])
        decoded, _ = codec.decode(heatmaps)
        errors[mode] = np.linalg.norm(decoded - keypoints, axis=-1).mean()
    assert errors["dark"] < errors["quarter_per_axis"] == errors["quarter"]


@pytest.mark.parametrize("encoding", ["reference", "unbiased"])
def test_target_is_a_gaussian_of_the_given_sigma_at_the_keypoint(encoding):
    codec = HeatmapCodec((64, 64), stride=4, sigma=2.0, encoding=encoding)
    heatmaps, weights = codec.encode(np.array([[20.0, 24.0]] + [[0.0, 0.0]] * 16),
                                     np.array([2] + [0] * 16))
    assert weights.tolist() == [1.0] + [0.0] * 16
    assert heatmaps[0, 6, 5] == pytest.approx(1.0)  # (24/4, 20/4)
    assert heatmaps[0, 6, 7] == pytest.approx(np.exp(-4 / 8))  # two pixels away, sigma 2
    assert heatmaps[0, 6, 5 + 7] == 0.0  # beyond 3 sigma
    assert not heatmaps[1:].any()


@pytest.mark.parametrize("encoding", ["reference", "unbiased"])
def test_joints_far_outside_the_crop_get_zero_weight(encoding):
    codec = HeatmapCodec((64, 48), stride=4, sigma=2.0, encoding=encoding)
    keypoints = np.array([[-40.0, 10.0], [10.0, 300.0], [-5.0, 10.0]] + [[10.0, 10.0]] * 14)
    _, weights = codec.encode(keypoints, np.ones(17))
    assert weights[:3].tolist() == [0.0, 0.0, 1.0]  # the third is 1.25 px outside: kept


def test_reference_targets_are_rounded_and_unbiased_ones_are_not():
    keypoint = np.array([[4 * 5.4, 4 * 6.6]] + [[0.0, 0.0]] * 16)
    visible = np.array([1] + [0] * 16)
    reference, _ = HeatmapCodec((64, 64), encoding="reference").encode(keypoint, visible)
    unbiased, _ = HeatmapCodec((64, 64), encoding="unbiased").encode(keypoint, visible)
    assert reference[0, 7, 5] == 1.0  # the centre rounded to (5, 7)
    assert unbiased[0].max() < 1.0 and np.unravel_index(unbiased[0].argmax(), (16, 16)) == (7, 5)


def test_unknown_encoding_or_decoding_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'exact'"):
        HeatmapCodec((64, 48), encoding="exact")
    with pytest.raises(ValueError, match="'argmax'"):
        HeatmapCodec((64, 48), decode="argmax")
