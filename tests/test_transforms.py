import cv2
import numpy as np
import pytest
import torch

from pose.data.heatmap import HeatmapCodec
from pose.data.keypoints import (COCO_KEYPOINTS, FLIP_PAIRS, KEYPOINT_NAMES, OKS_SIGMAS,
                                 KeypointSet, flip_permutation)
from pose.errors import DataError, DataWarning
from pose.data.transforms import (apply_affine, box_to_center_scale, crop_matrix, invert_affine,
                                  warp)


def test_flip_pairs_swap_left_and_right_names():
    for left, right in FLIP_PAIRS:
        assert KEYPOINT_NAMES[left].replace("left", "right") == KEYPOINT_NAMES[right]
    perm = flip_permutation()
    assert (perm[perm] == np.arange(17)).all()
    # the set derives the same pairs from the names alone
    expected = np.arange(17)
    for left, right in FLIP_PAIRS:
        expected[left], expected[right] = right, left
    assert (COCO_KEYPOINTS.flip_permutation() == expected).all()
    assert COCO_KEYPOINTS.lower_body == tuple(range(11, 17))
    assert COCO_KEYPOINTS.upper_body == tuple(range(11))


def test_a_keypoint_set_from_a_category_of_other_names():
    # CrowdPose's 14 keypoints, in its own order and naming
    names = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
             "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
             "right_ankle", "head", "neck"]
    category = {"id": 1, "name": "person", "keypoints": names,
                "skeleton": [[13, 14], [14, 1], [14, 2], [1, 3]]}
    with pytest.raises(DataError, match=r"2 of them not COCO's \(head, neck\).*a list of 14 "
                                        r"numbers.*data.oks_sigmas.*--oks-sigmas"):
        KeypointSet.from_category(category, "crowdpose.json")
    sigmas = [0.079] * 12 + [0.026, 0.026]
    keypoint_set = KeypointSet.from_category(category, "crowdpose.json", sigmas)
    perm = keypoint_set.flip_permutation()
    assert [names[i] for i in perm[:4]] == ["right_shoulder", "left_shoulder", "right_elbow",
                                             "left_elbow"]
    assert perm[12] == 12 and perm[13] == 13  # head and neck have no side
    assert keypoint_set.skeleton == ((12, 13), (13, 0), (13, 1), (0, 2))
    assert keypoint_set.lower_body == tuple(range(6, 12))
    assert KeypointSet.from_dict(keypoint_set.to_dict()) == keypoint_set

    # other spellings of the sides: l_/r_ prefixes and _left/_right suffixes
    other = KeypointSet(("l_ankle", "r_ankle", "wrist_left", "wrist_right", "pelvis"), (),
                        (0.1,) * 5)
    assert list(other.flip_permutation()) == [1, 0, 3, 2, 4]
    for bad, message in (({"id": 1, "keypoints": []}, "non-empty list"),
                         ({"id": 1, "keypoints": ["a", "a"]}, "twice"),
                         ({"id": 1, "keypoints": 3}, "non-empty list")):
        with pytest.raises(DataError, match=message):
            KeypointSet.from_category(bad, "f.json", [0.1, 0.1])


@pytest.mark.parametrize("geometry,mirror", [("reference", 192), ("centred", 191)])
def test_flipping_keypoints_twice_is_identity(geometry, mirror):
    # The dataset's flip: the mirrored crop matrix, then the left/right permutation.
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, 400, (17, 2))
    center, scale = box_to_center_scale((50, 40, 150, 200), 0.75)
    plain = crop_matrix(center, scale, 10.0, (192, 256), geometry=geometry)
    flipped = crop_matrix(center, scale, 10.0, (192, 256), flip=True, geometry=geometry)
    perm = flip_permutation()
    once = apply_affine(keypoints, flipped)[perm]
    np.testing.assert_allclose(once[perm][:, 0], mirror - apply_affine(keypoints, plain)[:, 0])
    # mirroring the mirrored crop again gives the plain crop back
    twice = (mirror - once[:, 0])[perm]
    np.testing.assert_allclose(twice, apply_affine(keypoints, plain)[:, 0], atol=1e-9)


def test_any_subset_of_coco_names_takes_coco_sigmas_by_name():
    names = [KEYPOINT_NAMES[j] for j in (16, 0, 5, 6, 11, 12, 13, 14, 15, 7, 8, 9, 10)]
    keypoint_set = KeypointSet.from_category({"id": 1, "keypoints": names}, "subset.json")
    assert keypoint_set.sigmas == tuple(float(OKS_SIGMAS[KEYPOINT_NAMES.index(n)])
                                        for n in names)


def test_a_skeleton_entry_outside_the_keypoints_is_dropped_with_one_warning():
    names = list(KEYPOINT_NAMES[:14])
    category = {"id": 1, "keypoints": names,
                "skeleton": [[1, 2], [16, 14], [2, 3], [17, 15], "x", [0, 1]]}
    with pytest.warns(DataWarning) as caught:
        keypoint_set = KeypointSet.from_category(category, "crowdpose.json")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skeleton[1] = [16, 14], skeleton[3] = [17, 15], skeleton[4] = 'x' and 1 more" in message
    assert "crowdpose.json" in message and "1..14" in message
    assert keypoint_set.skeleton == ((0, 1), (1, 2))


def test_flipping_heatmaps_back_twice_is_identity():
    heatmaps = torch.randn(2, 17, 8, 6)
    perm = flip_permutation()
    twice = HeatmapCodec.flip_back(HeatmapCodec.flip_back(heatmaps, perm, False), perm, False)
    assert torch.equal(twice, heatmaps)


@pytest.mark.parametrize("geometry", ["reference", "centred"])
def test_flipped_crop_matrix_mirrors_the_crop(geometry):
    image = np.random.default_rng(1).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    center, scale = box_to_center_scale((10, 20, 50, 70), 0.75)
    plain = warp(image, crop_matrix(center, scale, 17.0, (48, 64), geometry=geometry), (48, 64))
    mirrored = warp(image, crop_matrix(center, scale, 17.0, (48, 64), flip=True,
                                       geometry=geometry), (48, 64))
    expected = cv2.flip(plain, 1).astype(int)
    if geometry == "reference":  # mirrored about x = W/2: column u shows plain column W - u
        mirrored, expected = mirrored[:, 1:], expected[:, :-1]
    # Same sampling points; OpenCV's fixed-point bilinear weights may differ by one level.
    assert np.abs(mirrored.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("rotation,flip", [(0.0, False), (33.0, False), (-40.0, True)])
def test_affine_round_trip_is_below_a_hundredth_of_a_pixel(rotation, flip):
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 640, (100, 2))
    center, scale = box_to_center_scale((100, 50, 200, 300), 0.75)
    matrix = crop_matrix(center, scale, rotation, (192, 256), flip)
    back = apply_affine(apply_affine(points, matrix), invert_affine(matrix))
    assert np.abs(back - points).max() < 0.01


@pytest.mark.parametrize("geometry,middle", [("reference", 0.0), ("centred", 0.5)])
def test_crop_matrix_maps_box_centre_to_crop_centre_and_box_to_crop(geometry, middle):
    center, scale = box_to_center_scale((100, 50, 150, 200), 192 / 256, padding=1.0)
    assert scale[0] / scale[1] == pytest.approx(192 / 256)
    matrix = crop_matrix(center, scale, 0.0, (192, 256), geometry=geometry)
    np.testing.assert_allclose(apply_affine(center[None], matrix)[0],
                               [96 - middle, 128 - middle])
    corner = center - scale / 2
    np.testing.assert_allclose(apply_affine(corner[None], matrix)[0], [-middle, -middle])


def test_unknown_crop_geometry_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'middle'"):
        crop_matrix(np.zeros(2), np.ones(2), 0.0, (48, 64), geometry="middle")


def test_batched_apply_affine_matches_one_by_one():
    rng = np.random.default_rng(3)
    points, matrices = rng.normal(size=(4, 17, 2)), rng.normal(size=(4, 2, 3))
    batched = apply_affine(points, matrices)
    for i in range(4):
        np.testing.assert_allclose(batched[i], apply_affine(points[i], matrices[i]))
