"""The paper setting's defaults against the SimpleBaselines/HRNet conventions.

Each ``reference_*`` helper below restates one rule of that code base from its description
(README, "Fidelity to the reference pipeline"), one joint or one box at a time, with Python's
own ``int`` (which truncates toward zero) where the reference uses it. The project's
vectorised code is compared with them on cases chosen to sit on every border of the rules.
"""
import json

import cv2
import numpy as np
import pytest

from pose.config import Config
from pose.data.build import build_dataset, make_codec
from pose.data.coco import Augmentation, TopDownCocoDataset
from pose.data.heatmap import HeatmapCodec
from pose.data.keypoints import COCO_KEYPOINTS, FLIP_PAIRS
from pose.data.transforms import apply_affine
from pose.evaluation.coco_eval import oks_nms

INPUT_W, INPUT_H, STRIDE = 48, 64, 4
HEATMAP_W, HEATMAP_H = INPUT_W // STRIDE, INPUT_H // STRIDE


def reference_target(joints, visible, sigma, width=HEATMAP_W, height=HEATMAP_H):
    """Heatmaps and weights for crop-pixel joints: a (2r + 1)-square Gaussian patch,
    r = 3 sigma, centred on the joint's rounded heatmap position and cut at the border."""
    radius = sigma * 3
    target = np.zeros((len(joints), height, width))
    weight = np.zeros(len(joints))
    for j, (x, y) in enumerate(joints):
        weight[j] = 1.0 if visible[j] > 0 else 0.0
        mu_x, mu_y = int(x / STRIDE + 0.5), int(y / STRIDE + 0.5)
        left, top = int(mu_x - radius), int(mu_y - radius)
        right, bottom = int(mu_x + radius + 1), int(mu_y + radius + 1)
        if left >= width or top >= height or right < 0 or bottom < 0:
            weight[j] = 0.0
            continue
        size = 2 * radius + 1
        xs = np.arange(0, size, 1)
        middle = size // 2
        patch = np.exp(-((xs[None, :] - middle) ** 2 + (xs[:, None] - middle) ** 2)
                       / (2 * sigma ** 2))
        px0, px1 = max(0, -left), min(right, width) - left
        py0, py1 = max(0, -top), min(bottom, height) - top
        if weight[j] > 0.5:
            target[j, max(0, top):min(bottom, height), max(0, left):min(right, width)] = \
                patch[py0:py1, px0:px1]
    return target, weight


def reference_decode(heatmaps):
    """Heatmap-pixel coordinates: argmax; (0, 0) where the maximum is not positive; a quarter
    step towards the higher neighbour only for peaks at 2..size-2 on both axes."""
    n, k, height, width = heatmaps.shape
    coords = np.zeros((n, k, 2))
    for i in range(n):
        for j in range(k):
            hm = heatmaps[i, j]
            index = int(hm.reshape(-1).argmax())
            x, y = float(index % width), float(index // width)
            if hm.reshape(-1)[index] <= 0:
                x, y = 0.0, 0.0
            px, py = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            if 1 < px < width - 1 and 1 < py < height - 1:
                x += 0.25 * np.sign(hm[py, px + 1] - hm[py, px - 1])
                y += 0.25 * np.sign(hm[py + 1, px] - hm[py - 1, px])
            coords[i, j] = x, y
    return coords


def reference_crop_coords(points, center, scale):
    """Image -> crop pixels: the box centre lands at (W/2, H/2), the scale fills the crop."""
    return np.stack([INPUT_W / 2 + (points[:, 0] - center[0]) * INPUT_W / scale[0],
                     INPUT_H / 2 + (points[:, 1] - center[1]) * INPUT_H / scale[1]], axis=1)


def reference_center_scale(box, padding=1.25):
    x, y, w, h = box
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > INPUT_W / INPUT_H * h:
        h = w * INPUT_H / INPUT_W
    else:
        w = h * INPUT_W / INPUT_H
    return center, np.array([w, h]) * padding


def reference_clean_box(box, width, height):
    """Ground-truth boxes are clipped to the image (the last pixel is width - 1)."""
    x, y, w, h = box
    x1, y1 = max(0, x), max(0, y)
    x2, y2 = min(width - 1, x1 + max(0, w - 1)), min(height - 1, y1 + max(0, h - 1))
    return [x1, y1, x2 - x1, y2 - y1]


def peaks(maps):
    return [np.unravel_index(m.argmax(), m.shape) if m.any() else None for m in maps]


# Joints on every border of the rules: rounding at x.5 and toward zero below 0, windows just
# inside and just outside the heatmap, and far away.
BORDER_X = np.array([-40.0, -31.0, -29.0, -27.9, -26.0, -6.1, -5.9, -2.0, -0.1, 0.0, 1.9, 2.1,
                     5.99, 6.0, 46.0, 47.9, 50.0, 55.0, 69.0, 70.1, 73.0, 74.0, 90.0])


def border_cases(rng, count=600):
    x = np.concatenate([BORDER_X, rng.uniform(-45, INPUT_W + 45, count - len(BORDER_X))])
    y = np.concatenate([rng.uniform(-45, INPUT_H + 45, len(BORDER_X)),
                        rng.uniform(-45, INPUT_H + 45, count - len(BORDER_X))])
    joints = np.stack([x, y], axis=1)
    visible = rng.choice([0, 1, 2], count, p=[0.1, 0.3, 0.6])
    return joints, visible


@pytest.mark.parametrize("sigma", [2.0, 1.5, 3.0])
def test_reference_targets_match_the_reference_rule_at_and_beyond_the_border(sigma):
    joints, visible = border_cases(np.random.default_rng(int(sigma * 10)))
    codec = HeatmapCodec((INPUT_H, INPUT_W), STRIDE, sigma, encoding="reference")
    ours, weights = codec.encode(joints, visible)
    expected, expected_weights = reference_target(joints, visible, sigma)
    assert (weights == expected_weights).all()
    assert peaks(ours) == peaks(expected)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    # The rule's corner: a joint whose window ends at the border keeps its weight, and its
    # target is all zero (nothing of the patch lands on the heatmap).
    assert ((weights == 1) & ~ours.reshape(len(ours), -1).any(1)).any()


def test_reference_decoding_matches_the_reference_rule_at_the_border():
    rng = np.random.default_rng(3)
    heatmaps = rng.uniform(-0.1, 0.5, (40, 17, HEATMAP_H, HEATMAP_W))
    for i, j in np.ndindex(40, 17):  # peaks on every row and column, the borders included
        y, x = rng.integers(0, HEATMAP_H), (i * 17 + j) % HEATMAP_W
        heatmaps[i, j, y, x] = 1.0 + rng.uniform()
    heatmaps[0, :4] = -rng.uniform(0.1, 1.0, (4, HEATMAP_H, HEATMAP_W))  # no positive peak
    heatmaps[1, :2] = 0.0
    heatmaps = heatmaps.astype(np.float32)  # what a network gives
    codec = HeatmapCodec((INPUT_H, INPUT_W), STRIDE, decode="quarter")
    coords, scores = codec.decode(heatmaps)
    np.testing.assert_allclose(coords / STRIDE, reference_decode(heatmaps), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(scores, heatmaps.reshape(40, 17, -1).max(2))
    # the per-axis rule of earlier versions differs exactly at the border
    per_axis, _ = HeatmapCodec((INPUT_H, INPUT_W), STRIDE, decode="quarter_per_axis").decode(
        heatmaps)
    assert (per_axis != coords).any()


@pytest.fixture
def one_person(tmp_path):
    """A 130x100 picture with one person whose box crosses the left border and whose joints
    lie inside, near and beyond the image border; and two detector boxes crossing it."""
    rng = np.random.default_rng(5)
    width, height = 130, 100
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((height, width, 3), np.uint8))
    joints = np.concatenate([rng.uniform([-8, -8], [width + 8, height + 8], (17, 2)),
                             np.full((17, 1), 2.0)], axis=1)
    joints[3, 2] = 0  # one unlabelled joint
    box = [-12.3, 4.6, 90.7, 93.1]
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                            "bbox": box, "area": 5000.0, "num_keypoints": 16,
                            "keypoints": joints.reshape(-1).tolist()}],
           "categories": [COCO_KEYPOINTS.to_category()]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    dets = [{"image_id": 1, "category_id": 1, "bbox": [-30.5, 10.2, 100.3, 80.8], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [100.4, -20.1, 80.0, 150.6], "score": 0.8},
            {"image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 0.0, 10.0], "score": 0.7}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path, joints, box, dets, (width, height)


def paper_config(folder) -> Config:
    cfg = Config()  # the paper setting's defaults; only the sizes are small here
    cfg.data.root = str(folder)
    cfg.data.input_size = [INPUT_H, INPUT_W]
    cfg.data.val_ann = cfg.data.train_ann = "ann.json"
    cfg.data.val_images = cfg.data.train_images = "."
    cfg.data.det_file = "dets.json"
    return cfg


@pytest.mark.parametrize("flip", [False, True])
def test_paper_defaults_give_the_reference_targets_for_image_keypoints(one_person, flip):
    folder, joints, box, _, (width, height) = one_person
    cfg = paper_config(folder)
    if flip:  # training with a flip and nothing else random
        dataset = TopDownCocoDataset(folder / "ann.json", folder, make_codec(cfg), train=True,
                                     augmentation=Augmentation(
                                         flip_prob=1.0, half_body_prob=0.0, scale_factor=0.0,
                                         rotation_prob=0.0, photometric=False))
    else:
        dataset = build_dataset(cfg, train=False, use_gt_boxes=True)
    item = dataset[0]
    assert item["flipped"] == flip

    center, scale = reference_center_scale(reference_clean_box(box, width, height))
    points, visible = joints[:, :2].copy(), joints[:, 2].copy()
    if flip:  # the reference mirrors the image, its joints and the box centre, then swaps sides
        points[:, 0] = width - 1 - points[:, 0]
        center = np.array([width - 1 - center[0], center[1]])
        for left, right in FLIP_PAIRS:
            points[[left, right]] = points[[right, left]]
            visible[[left, right]] = visible[[right, left]]
    expected, expected_weights = reference_target(reference_crop_coords(points, center, scale),
                                                  visible, cfg.data.sigma)
    heatmaps, weights = item["heatmaps"].numpy(), item["weights"].numpy()
    assert (weights == expected_weights).all()
    assert peaks(heatmaps) == peaks(expected)
    np.testing.assert_allclose(heatmaps, expected, rtol=0, atol=1e-6)


def test_decoded_keypoints_map_back_as_the_reference_maps_them(one_person):
    folder, *_ = one_person
    cfg = paper_config(folder)
    dataset = build_dataset(cfg, train=False)  # detector boxes
    rng = np.random.default_rng(9)
    for index, sample in enumerate(dataset.samples):
        heatmaps = rng.uniform(0, 1, (1, 17, HEATMAP_H, HEATMAP_W)).astype(np.float32)
        coords, _ = dataset.codec.decode(heatmaps)
        ours = apply_affine(coords[0], dataset[index]["inv_matrix"].numpy())
        hm = reference_decode(heatmaps)[0]
        center, scale = sample["center"], sample["scale"]
        expected = np.stack([center[0] + (hm[:, 0] - HEATMAP_W / 2) * scale[0] / HEATMAP_W,
                             center[1] + (hm[:, 1] - HEATMAP_H / 2) * scale[1] / HEATMAP_H], 1)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def test_detector_boxes_are_cropped_as_given_unless_clipping_is_asked_for(one_person):
    folder, _, _, dets, (width, height) = one_person
    cfg = paper_config(folder)
    raw = build_dataset(cfg, train=False)
    # the zero-width box is cropped too, its size taken from its height, as the reference does
    assert [s["score"] for s in raw.samples] == [0.9, 0.8, 0.7]
    for sample, det in zip(raw.samples, dets):
        center, scale = reference_center_scale(det["bbox"])
        np.testing.assert_allclose(sample["center"], center, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sample["scale"], scale, rtol=0, atol=1e-12)

    cfg.data.clip_detection_boxes = True
    clipped = build_dataset(cfg, train=False)
    for sample, det in zip(clipped.samples, dets):
        center, scale = reference_center_scale(reference_clean_box(det["bbox"], width, height))
        np.testing.assert_allclose(sample["center"], center, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sample["scale"], scale, rtol=0, atol=1e-12)
        assert not np.allclose(sample["center"], reference_center_scale(det["bbox"])[0])


def test_oks_nms_breaks_ties_by_a_fixed_rule_the_later_of_equal_scores():
    # The reference sorts scores with numpy's default (unstable) argsort, so which of exactly
    # equal scores it keeps depends on the sort: there is no rule of its to copy. Ours is
    # fixed: of equal scores, the later result comes first.
    keypoints = np.tile(np.array([[50.0, 60.0, 1.0]] * 17), (3, 1, 1))
    assert oks_nms(keypoints, np.array([0.5, 0.5, 0.5]), np.full(3, 4000.0), 0.9) == [2]
    assert oks_nms(keypoints, np.array([0.5, 0.7, 0.5]), np.full(3, 4000.0), 0.9) == [1]


def reference_keeps_gt_box(box, area, width, height):
    """The reference keeps a ground-truth box with a positive area whose clipped corners do
    not cross (x2 >= x1, y2 >= y1: a box of zero width or height stays)."""
    x, y, w, h = box
    x1, y1 = max(0, x), max(0, y)
    x2, y2 = min(width - 1, x1 + max(0, w - 1)), min(height - 1, y1 + max(0, h - 1))
    return area > 0 and x2 >= x1 and y2 >= y1


def reference_half_body(joints, visible, normal_draw, aspect_ratio):
    """(centre, scale) of the half-body box, or None: the upper body when a standard normal
    draw is below 0.5 and it has more than two visible joints, else the lower body if it has
    more than two, else the upper; at least two joints. Centre: the joints' mean; size: their
    extent, widened to the aspect ratio, times 1.5."""
    upper_ids = set(COCO_KEYPOINTS.upper_body)
    upper = [joints[j] for j in range(len(joints)) if visible[j] > 0 and j in upper_ids]
    lower = [joints[j] for j in range(len(joints)) if visible[j] > 0 and j not in upper_ids]
    if normal_draw < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    chosen = np.array(chosen)
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) * 1.5


def reference_rotation(normal_draw, factor=45.0):
    return float(np.clip(normal_draw * factor, -2 * factor, 2 * factor))


class ScriptedDraws:
    """A random generator that returns given draws: uniform ones from ``uniform``, standard
    normal ones from ``normal``, in order."""

    def __init__(self, uniform, normal):
        self.uniform, self.normal = list(uniform), list(normal)

    def random(self):
        return self.uniform.pop(0)

    def standard_normal(self):
        return self.normal.pop(0)


def test_training_draws_follow_the_reference_rules(one_person):
    from statistics import NormalDist

    folder, joints, box, _, (width, height) = one_person
    dataset = build_dataset(paper_config(folder), train=True)
    sample = dataset.samples[0]
    aspect = INPUT_W / INPUT_H
    # Our rule draws a uniform u for the choice of half and takes the upper body when
    # u < Phi(0.5); the reference takes it when its normal draw z < 0.5. With u = Phi(z) the
    # two decide alike, so each case gives the same z to both.
    for z_half, z_scale, z_rotation in [(-1.2, 0.3, 0.7), (0.49, -2.5, 1.9), (0.51, 1.0, 2.4),
                                        (1.7, -0.2, -3.1), (0.0, 0.0, -0.5)]:
        draws = ScriptedDraws([0.0, NormalDist().cdf(z_half), 0.0, 0.9],
                              [z_scale, z_rotation])
        center, scale, rotation, flip = dataset._augment(sample, draws)
        expected = reference_half_body(joints[:, :2], joints[:, 2], z_half, aspect)
        np.testing.assert_allclose(center, expected[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(scale, expected[1] * (1 + np.clip(z_scale, -1, 1) * 0.35),
                                   rtol=1e-12)
        assert rotation == reference_rotation(z_rotation)
        assert not flip and not draws.uniform and not draws.normal  # every draw used once
    # the half-body gate and the rotation gate closed: the GT box, no rotation
    draws = ScriptedDraws([0.99, 0.99, 0.0], [0.0])
    center, scale, rotation, flip = dataset._augment(sample, draws)
    expected = reference_center_scale(reference_clean_box(box, width, height))
    np.testing.assert_allclose(center, expected[0], rtol=0, atol=1e-9)
    assert rotation == 0.0 and flip


def test_the_earlier_augmentation_stays_available_as_options(one_person):
    folder, joints, *_ = one_person
    cfg = paper_config(folder)
    cfg.data.half_body_centre, cfg.data.rotation_clip = "box", 1.0
    dataset = build_dataset(cfg, train=True)
    draws = ScriptedDraws([0.0, 0.2, 0.0, 0.9], [0.0, 2.4])
    center, _, rotation, _ = dataset._augment(dataset.samples[0], draws)
    assert rotation == 45.0  # clip(z, -1, 1) * 45
    upper = [j for j in COCO_KEYPOINTS.upper_body if joints[j, 2] > 0]
    points = joints[upper, :2]
    np.testing.assert_allclose(center, (points.min(0) + points.max(0)) / 2, rtol=0, atol=1e-9)


@pytest.mark.parametrize("drop", [False, True])
def test_ground_truth_boxes_are_kept_by_the_reference_rule(tmp_path, drop):
    width, height = 60, 40
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((height, width, 3), np.uint8))
    joints = [30.0, 20.0, 2.0] * 17
    boxes = [([10.0, 5.0, 20.0, 30.0], 100.0),  # ordinary
             ([10.0, 5.0, 1.0, 30.0], 30.0),  # one pixel wide: zero width once clipped
             ([59.0, 5.0, 8.0, 30.0], 30.0),  # crosses the right border at its last pixel
             ([10.0, 5.0, 0.5, 0.5], 1.0),  # a point once clipped: kept by the check
             ([10.0, 5.0, 0.0, 0.0], 1.0),  # a point as given
             ([70.0, 5.0, 8.0, 30.0], 30.0),  # beyond the image
             ([10.0, 5.0, -4.0, 30.0], 30.0),  # negative width
             ([10.0, 5.0, 20.0, 30.0], 0.0)]  # no area
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
           "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                            "bbox": b, "area": a, "num_keypoints": 17, "keypoints": joints}
                           for i, (b, a) in enumerate(boxes)],
           "categories": [COCO_KEYPOINTS.to_category()]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    cfg = paper_config(tmp_path)
    cfg.data.drop_zero_size_boxes = drop
    with pytest.warns(Warning):  # the file check reports the degenerate boxes
        dataset = build_dataset(cfg, train=False, use_gt_boxes=True)
    # The reference's rule, less the boxes no crop can be made of: a negative width is no box
    # and a point as given (the file check skips both, with a warning), and a point once
    # clipped gives a zero scale (the one case where the reference would divide by zero).
    expected = [(b, a) for b, a in boxes if reference_keeps_gt_box(b, a, width, height)
                and b[2] >= 0 and b[3] >= 0
                and any(v > 0 for v in reference_clean_box(b, width, height)[2:])]
    if drop:
        expected = [(b, a) for b, a in expected
                    if all(v > 0 for v in reference_clean_box(b, width, height)[2:])]
    assert len(dataset.samples) == len(expected) == (1 if drop else 3)
    for sample, (b, _) in zip(dataset.samples, expected):
        center, scale = reference_center_scale(reference_clean_box(b, width, height))
        np.testing.assert_allclose(sample["center"], center, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sample["scale"], scale, rtol=0, atol=1e-12)


def test_loss_is_half_the_mean_squared_error_of_the_weighted_heatmaps():
    import torch

    from pose.engine.loop import heatmap_loss

    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(3, 5, 8, 6)), rng.uniform(size=(3, 5, 8, 6))
    weights = rng.choice([0.0, 1.0], size=(3, 5))
    # the reference: per joint, 0.5 * MSE(pred * w, target * w) over the batch; mean over joints
    expected = np.mean([0.5 * np.mean((pred[:, j] * weights[:, j, None, None]
                                       - target[:, j] * weights[:, j, None, None]) ** 2)
                        for j in range(5)])
    # (the loss is computed in float32, as in training)
    ours = heatmap_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(weights))
    assert ours.item() == pytest.approx(expected, rel=1e-6)
    plain = heatmap_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(weights), 1.0)
    assert plain.item() == pytest.approx(2 * expected, rel=1e-6)


def test_an_exif_orientation_tag_is_ignored_as_the_annotations_require(one_person):
    from PIL import Image

    folder, *_ = one_person
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (100, 130, 3), dtype=np.uint8)  # stored 130 wide, 100 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show upright
    Image.fromarray(pixels).save(folder / "tagged.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(pixels).save(folder / "plain.jpg", quality=95)
    assert cv2.imread(str(folder / "tagged.jpg")).shape[:2] == (130, 100)  # OpenCV turns it
    items = {}
    for name in ("tagged", "plain"):
        ann = json.loads((folder / "ann.json").read_text())
        ann["images"][0]["file_name"] = f"{name}.jpg"
        (folder / f"{name}.json").write_text(json.dumps(ann))
        cfg = paper_config(folder)
        cfg.data.val_ann = f"{name}.json"
        dataset = build_dataset(cfg, train=False, use_gt_boxes=True)
        assert dataset.read_image(1).shape == (100, 130, 3)
        items[name] = dataset[0]
    for key in ("image", "heatmaps", "weights", "inv_matrix"):
        assert np.array_equal(items["tagged"][key], items["plain"][key]), key
