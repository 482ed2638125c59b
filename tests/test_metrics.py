"""Metrics against independent references: NumPy (resize, peaks, hits, I/U) and pycocotools."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from refbench.errors import PredictionError
from refbench.metrics.functional import (
    binarise,
    box_hit,
    hit_rate,
    intersection_union,
    mean_iou,
    oracle_proposal,
    overall_iou,
    peak_yx,
    point_hit,
    point_m,
    protocol_maps,
    resize_to,
    select_proposal,
)
from refbench.metrics.records import metrics_from_records, per_group
from refbench.metrics.scoring import score_batch

# ---- independent NumPy references ---------------------------------------------------------


def np_bilinear(image: np.ndarray, height: int, width: int, align_corners: bool) -> np.ndarray:
    """Bilinear resize of one [h, w] map in float64, following PyTorch's source-index rule."""
    in_h, in_w = image.shape

    def taps(out_size: int, in_size: int):
        dst = np.arange(out_size, dtype=np.float64)
        if align_corners:
            scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
            src = dst * scale
        else:
            src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
        low = np.floor(src).astype(int)
        low = np.minimum(low, in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        frac = src - low
        return low, high, frac

    y0, y1, fy = taps(height, in_h)
    x0, x1, fx = taps(width, in_w)
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def np_protocol_map(raw: np.ndarray, height: int, width: int, protocol: str) -> np.ndarray:
    """The protocol map of one raw map, in float64 (TRIS: ReLU, resize, /max+1e-5)."""
    if protocol == "tris":
        resized = np_bilinear(np.maximum(raw, 0), height, width, align_corners=True)
        return resized / (resized.max() + 1e-5)
    resized = np_bilinear(raw, height, width, align_corners=False)
    return (resized - resized.min()) / (resized.max() - resized.min() + 1e-9)


def np_peak(image: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(np.argmax(image, axis=None), image.shape)
    return int(y), int(x)


def np_official_box_hit(peak: tuple[int, int], bbox: list[float]) -> bool:
    """TRIS's rule: dataset/ReferDataset.py's integer box, validate.py's isCorrectHit test."""
    box = np.array(bbox, dtype=int)
    box[2], box[3] = box[0] + box[2], box[1] + box[3]
    row, col = peak
    return bool(box[0] <= col <= box[2] and box[1] <= row <= box[3])


def rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def random_blob_masks(rng: np.random.Generator, count: int, height: int, width: int):
    masks = np.zeros((count, height, width), dtype=bool)
    for i in range(count):
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        masks[i, y0:y1, x0:x1] = True
        masks[i] ^= rng.random((height, width)) < 0.05
    return masks


# ---- resizing and protocol maps ------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [((7, 5), (23, 31)), ((32, 32), (48, 64)), ((4, 9), (4, 9))])
def test_resize_matches_numpy_bilinear(align_corners, shape):
    (h, w), (height, width) = shape
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, h, w)).astype(np.float32)
    got = resize_to(torch.from_numpy(maps), (height, width), align_corners=align_corners)
    assert got.shape == (3, height, width) and got.dtype == torch.float32
    for e in range(3):
        expected = np_bilinear(maps[e], height, width, align_corners)
        np.testing.assert_allclose(got[e].numpy(), expected, atol=1e-5)


def test_resize_downsampling_matches_numpy():
    rng = np.random.default_rng(1)
    maps = rng.random((2, 40, 30)).astype(np.float32)
    got = resize_to(torch.from_numpy(maps), (13, 17))
    for e in range(2):
        np.testing.assert_allclose(got[e].numpy(), np_bilinear(maps[e], 13, 17, False), atol=1e-5)


@pytest.mark.parametrize("protocol", ["tris", "sag"])
def test_protocol_maps_match_numpy(protocol):
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(4, 10, 12)).astype(np.float32)
    got = protocol_maps(torch.from_numpy(raw), (37, 41), protocol)
    for e in range(4):
        np.testing.assert_allclose(got[e].numpy(), np_protocol_map(raw[e], 37, 41, protocol), atol=1e-5)


def test_tris_negative_values_are_not_target():
    # TRIS's model returns F.relu(map): a negative pixel can never be in the mask.
    raw = torch.tensor([[[-1.0, 2.0], [-3.0, -0.5]]])
    normalised = protocol_maps(raw, (2, 2), "tris")
    mask = binarise(normalised, "tris")
    assert mask.tolist() == [[[False, True], [False, False]]]
    assert torch.equal(normalised[0, 0, 0], torch.tensor(0.0))


@pytest.mark.parametrize("fill", [0.0, -2.5])
def test_tris_all_zero_or_negative_map_gives_empty_mask_and_peak_at_origin(fill):
    raw = torch.full((1, 6, 6), fill)
    normalised = protocol_maps(raw, (12, 15), "tris")
    assert not binarise(normalised, "tris").any()
    assert peak_yx(normalised).tolist() == [[0, 0]]


def test_tris_constant_positive_map_gives_full_mask_and_peak_at_origin():
    normalised = protocol_maps(torch.full((1, 3, 3), 0.7), (50, 80), "tris")
    assert binarise(normalised, "tris").all()
    assert peak_yx(normalised).tolist() == [[0, 0]]
    assert bool((normalised == normalised[0, 0, 0]).all())
    # 0.7 / (0.7 + 1e-5): just below 1, as in TRIS
    assert math.isclose(float(normalised.max()), 0.7 / (0.7 + 1e-5), rel_tol=1e-6)


@pytest.mark.parametrize("value", [0.0, 3.0, -4.0])
def test_sag_constant_map_gives_zeros_and_empty_mask(value):
    normalised = protocol_maps(torch.full((2, 4, 4), value), (9, 9), "sag")
    assert torch.equal(normalised, torch.zeros(2, 9, 9))
    assert not binarise(normalised, "sag").any()


def test_sag_threshold_is_inclusive_and_tris_exclusive():
    maps = torch.tensor([[[0.5, 0.4999], [1e-9, 2e-9]]])
    assert binarise(maps, "sag").tolist() == [[[True, False], [False, False]]]
    assert binarise(maps, "tris").tolist() == [[[True, True], [False, True]]]


# ---- peaks and hits ------------------------------------------------------------------------


def test_peak_matches_numpy_argmax_with_ties_and_constants():
    rng = np.random.default_rng(3)
    tied = rng.integers(0, 3, size=(20, 7, 9)).astype(np.float32)  # many ties
    constant = np.full((3, 5, 4), 1.5, dtype=np.float32)
    continuous = rng.normal(size=(10, 16, 11)).astype(np.float32)
    for maps in (tied, constant, continuous):
        got = peak_yx(torch.from_numpy(maps)).tolist()
        assert got == [list(np_peak(m)) for m in maps]


def test_peak_tie_goes_to_first_in_row_major_order():
    maps = torch.zeros(1, 3, 4)
    maps[0, 2, 0] = 5.0
    maps[0, 1, 3] = 5.0
    assert peak_yx(maps).tolist() == [[1, 3]]


def test_point_hit_matches_numpy():
    rng = np.random.default_rng(4)
    gt = rng.random((30, 8, 9)) < 0.4
    peaks = np.stack([rng.integers(0, 8, 30), rng.integers(0, 9, 30)], axis=1)
    got = point_hit(torch.from_numpy(peaks), torch.from_numpy(gt))
    expected = [bool(gt[i, y, x]) for i, (y, x) in enumerate(peaks)]
    assert got.tolist() == expected
    assert point_m(torch.from_numpy(peaks), torch.from_numpy(gt)) == pytest.approx(np.mean(expected))


def test_point_hit_empty_gt_and_single_pixel_target():
    gt = torch.zeros(2, 5, 5, dtype=torch.bool)
    gt[1, 3, 2] = True
    peaks = torch.tensor([[3, 2], [3, 2]])
    assert point_hit(peaks, gt).tolist() == [False, True]
    assert point_hit(torch.tensor([[0, 0], [2, 3]]), gt).tolist() == [False, False]


def test_box_hit_uses_pixel_centres_with_closed_edges():
    # box x in [10, 20], y in [5, 8]: pixel centres x + 0.5, y + 0.5
    boxes = torch.tensor([[10.0, 5.0, 10.0, 3.0]]).repeat(8, 1)
    peaks = torch.tensor(
        [
            [5, 10],  # centre (10.5, 5.5): inside
            [5, 19],  # centre x 19.5: inside
            [5, 20],  # centre x 20.5: outside
            [5, 9],  # centre x 9.5: outside
            [7, 15],  # centre y 7.5: inside
            [8, 15],  # centre y 8.5: outside
            [4, 15],  # centre y 4.5: outside
            [6, 12],
        ]
    )
    assert box_hit(peaks, boxes).tolist() == [True, True, False, False, True, False, False, True]
    # a box whose edge falls exactly on a pixel centre includes that pixel (closed box)
    edge = torch.tensor([[2.5, 0.5, 1.0, 1.0]])
    assert box_hit(torch.tensor([[0, 2]]), edge).tolist() == [True]
    assert box_hit(torch.tensor([[1, 3]]), edge).tolist() == [True]
    assert box_hit(torch.tensor([[1, 4]]), edge).tolist() == [False]


def test_box_hit_matches_numpy_on_random_boxes():
    rng = np.random.default_rng(5)
    boxes = np.concatenate([rng.random((50, 2)) * 20, rng.random((50, 2)) * 10], axis=1)
    peaks = rng.integers(0, 30, size=(50, 2))
    cx, cy = peaks[:, 1] + 0.5, peaks[:, 0] + 0.5
    expected = (
        (boxes[:, 0] <= cx)
        & (cx <= boxes[:, 0] + boxes[:, 2])
        & (boxes[:, 1] <= cy)
        & (cy <= boxes[:, 1] + boxes[:, 3])
    )
    got = box_hit(torch.from_numpy(peaks), torch.from_numpy(boxes).float().double())
    assert got.tolist() == expected.tolist()
    assert hit_rate(torch.from_numpy(peaks), torch.from_numpy(boxes)) == pytest.approx(expected.mean())


def test_box_hit_integer_rule_closed_integer_box():
    # box x in [10, 20], y in [5, 8] as integers: the peak's indices, edges included
    boxes = torch.tensor([[10.0, 5.0, 10.0, 3.0]], dtype=torch.float64).repeat(8, 1)
    peaks = torch.tensor(
        [
            [5, 10],  # x = x1: inside
            [5, 20],  # x = x1 + w exactly: inside (outside under the centre rule)
            [5, 21],  # one past x1 + w: outside
            [5, 9],  # one before x1: outside
            [8, 15],  # y = y1 + h exactly: inside (outside under the centre rule)
            [9, 15],  # one past y1 + h: outside
            [4, 15],  # one before y1: outside
            [6, 12],
        ]
    )
    hits = box_hit(peaks, boxes, rule="integer").tolist()
    assert hits == [True, True, False, False, True, False, False, True]
    assert box_hit(peaks, boxes, rule="centre").tolist() == [
        True, False, False, False, False, False, False, True,
    ]


def test_box_hit_integer_rule_truncates_each_number_separately():
    # x = 3.6, w = 2.6: x1 = 3, x2 = 3 + 2 = 5 (not int(6.2) = 6); y = 2.2, h = 1.9: y in [2, 3]
    box = torch.tensor([[3.6, 2.2, 2.6, 1.9]], dtype=torch.float64)
    cases = {
        (2, 3): True,  # x1 = int(3.6) = 3 (the centre rule says no: 3.5 < 3.6)
        (3, 5): True,  # x2 = 5, y2 = int(2.2) + int(1.9) = 3
        (3, 6): False,  # int(x + w) = 6 would admit it
        (4, 4): False,  # int(y + h) = 4 would admit row 4
        (1, 4): False,
    }
    for (row, col), expected in cases.items():
        assert box_hit(torch.tensor([[row, col]]), box, rule="integer").tolist() == [expected]
    # negative numbers truncate toward zero as NumPy's int cast does, not down:
    # (-1.5, -0.5, 3.7, 2.2) -> (-1, 0, 3, 2): x in [-1, 2], y in [0, 2]
    negative = torch.tensor([[-1.5, -0.5, 3.7, 2.2]], dtype=torch.float64)
    assert box_hit(torch.tensor([[2, 2]]), negative, rule="integer").tolist() == [True]
    assert box_hit(torch.tensor([[0, 3]]), negative, rule="integer").tolist() == [False]


def test_box_hit_integer_rule_matches_the_official_numpy_rule():
    rng = np.random.default_rng(19)
    count = 4000
    whole = rng.integers(-3, 40, size=(count, 4)).astype(np.float64)
    whole[:, 2:] = np.abs(whole[:, 2:])
    fractional = rng.uniform(-3.0, 40.0, size=(count, 4))
    fractional[:, 2:] = rng.uniform(0.0, 20.0, size=(count, 2))
    near = whole + rng.choice([-1e-9, 0.0, 1e-9, 0.5, 0.999999], size=(count, 4))
    boxes = np.concatenate([whole, fractional, near])
    anchors = np.stack([boxes[:, 1] + boxes[:, 3], boxes[:, 0] + boxes[:, 2]], axis=1)
    # peaks near the far edges, where the rules differ, and anywhere
    peaks = np.floor(anchors).astype(np.int64) + rng.integers(-2, 3, size=anchors.shape)
    peaks[::3] = rng.integers(-3, 60, size=peaks[::3].shape)
    expected = [np_official_box_hit(tuple(p), list(b)) for p, b in zip(peaks, boxes)]
    got = box_hit(torch.from_numpy(peaks), torch.from_numpy(boxes), rule="integer")
    assert got.tolist() == expected
    assert 0.2 < np.mean(expected) < 0.8  # both outcomes are well represented
    assert hit_rate(torch.from_numpy(peaks), torch.from_numpy(boxes), rule="integer") == (
        pytest.approx(np.mean(expected))
    )


def test_box_hit_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="centre, integer"):
        box_hit(torch.tensor([[0, 0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), rule="round")


# ---- intersection, union, IoU --------------------------------------------------------------


def test_intersection_union_match_numpy_and_pycocotools():
    rng = np.random.default_rng(6)
    pred = random_blob_masks(rng, 12, 21, 17)
    gt = random_blob_masks(rng, 12, 21, 17)
    inter, union = intersection_union(torch.from_numpy(pred), torch.from_numpy(gt))
    assert inter.dtype == torch.int64 and union.dtype == torch.int64
    assert inter.tolist() == [int((p & g).sum()) for p, g in zip(pred, gt)]
    assert union.tolist() == [int((p | g).sum()) for p, g in zip(pred, gt)]
    for e in range(12):
        coco_iou = mask_utils.iou([rle(pred[e])], [rle(gt[e])], [0])[0, 0]
        assert inter[e].item() / union[e].item() == pytest.approx(coco_iou, abs=1e-12)
    expected_miou = np.mean([mask_utils.iou([rle(p)], [rle(g)], [0])[0, 0] for p, g in zip(pred, gt)])
    assert mean_iou(inter, union) == pytest.approx(expected_miou, abs=1e-12)
    assert overall_iou(inter, union) == pytest.approx((pred & gt).sum() / (pred | gt).sum())


def test_empty_union_iou_is_zero_and_empty_gt_counts():
    # pred and gt both empty: IoU defined as 0 (docs/metrics.md)
    assert mean_iou([0, 5], [0, 10]) == pytest.approx(0.25)
    assert overall_iou([0], [0]) == 0.0
    assert math.isnan(mean_iou([], []))
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[0, 1, 1] = True
    inter, union = intersection_union(pred, empty)
    assert (inter.item(), union.item()) == (0, 1)


def test_mean_iou_is_independent_of_sample_order():
    rng = np.random.default_rng(7)
    union = rng.integers(1, 10**6, size=5000)
    inter = (union * rng.random(5000)).astype(np.int64)
    order = rng.permutation(5000)
    assert mean_iou(inter, union) == mean_iou(inter[order], union[order])


# ---- proposals -----------------------------------------------------------------------------


def np_select(maps: np.ndarray, proposals: np.ndarray) -> list[int]:
    chosen = []
    for response in maps:
        scores = [float((response * p).max()) for p in proposals]
        chosen.append(int(np.argmax(scores)))
    return chosen


def test_select_proposal_matches_numpy():
    rng = np.random.default_rng(8)
    maps = rng.random((5, 15, 13)).astype(np.float32)
    proposals = random_blob_masks(rng, 9, 15, 13)
    got = select_proposal(torch.from_numpy(maps), torch.from_numpy(proposals))
    assert got.tolist() == np_select(maps, proposals)


def test_select_proposal_ties_and_empty_proposals():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1.0
    maps[1] = 0.3
    proposals = torch.zeros(4, 4, 4, dtype=torch.bool)
    proposals[1, 0:2, 0:2] = True  # holds the peak
    proposals[3, 1:3, 1:3] = True  # holds it too: the lower index wins
    assert select_proposal(maps, proposals).tolist() == [1, 1]
    assert select_proposal(maps, torch.zeros(3, 4, 4, dtype=torch.bool)).tolist() == [0, 0]


def test_oracle_proposal_matches_pycocotools():
    rng = np.random.default_rng(9)
    proposals = random_blob_masks(rng, 11, 19, 23)
    gt = random_blob_masks(rng, 4, 19, 23)
    index, inter, union = oracle_proposal(torch.from_numpy(proposals), torch.from_numpy(gt))
    ious = mask_utils.iou([rle(g) for g in gt], [rle(p) for p in proposals], [0] * 11)
    assert index.tolist() == [int(np.argmax(row)) for row in ious]
    for e, best in enumerate(index.tolist()):
        assert inter[e].item() == int((proposals[best] & gt[e]).sum())
        assert union[e].item() == int((proposals[best] | gt[e]).sum())


def test_oracle_proposal_tie_goes_to_lowest_index():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2] = True
    proposals = torch.zeros(3, 4, 4, dtype=torch.bool)
    proposals[1, :2] = True
    proposals[2, :2] = True
    assert oracle_proposal(proposals, gt)[0].tolist() == [1]
    assert oracle_proposal(torch.zeros(2, 4, 4, dtype=torch.bool), gt)[0].tolist() == [0]


# ---- score_batch ---------------------------------------------------------------------------


def make_image(rng: np.random.Generator, expressions: int, height: int, width: int):
    gt = random_blob_masks(rng, expressions, height, width)
    boxes = []
    for mask in gt:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
    return gt, np.asarray(boxes, dtype=np.float32)


@pytest.mark.parametrize("protocol", ["tris", "sag"])
def test_score_batch_at_original_size_matches_a_numpy_pipeline(protocol):
    # maps already at the original size: no resize, so the NumPy reference is exact in float32
    rng = np.random.default_rng(10)
    height, width, count = 24, 30, 4
    maps = rng.normal(size=(count, height, width)).astype(np.float32)
    maps[2] = -np.abs(maps[2])  # all negative: empty tris mask
    gt, boxes = make_image(rng, count, height, width)
    objects = random_blob_masks(rng, 3, height, width)
    proposals = random_blob_masks(rng, 6, height, width)
    records, masks = score_batch(
        torch.from_numpy(maps), height, width, torch.from_numpy(gt), torch.from_numpy(boxes),
        protocol, proposals=torch.from_numpy(proposals), object_masks=torch.from_numpy(objects),
        return_masks=True,
    )
    assert len(records) == count
    for e, record in enumerate(records):
        raw = maps[e]
        if protocol == "tris":
            positive = np.maximum(raw, np.float32(0))
            normalised = positive / (positive.max() + np.float32(1e-5))
            mask = normalised > 1e-9
        else:
            low, high = raw.min(), raw.max()
            normalised = (raw - low) / (high - low + np.float32(1e-9))
            mask = normalised >= 0.5
        y, x = np_peak(normalised)
        assert record["peak"] == [y, x]
        assert np.array_equal(masks[e].numpy(), mask)
        assert record["point_hit"] == bool(gt[e, y, x])
        bx, by, bw, bh = boxes[e]
        if protocol == "tris":  # TRIS's isCorrectHit on the integer box
            assert record["box_hit"] == np_official_box_hit((y, x), [bx, by, bw, bh])
        else:  # sag: the pixel centre in the float box
            assert record["box_hit"] == bool(bx <= x + 0.5 <= bx + bw and by <= y + 0.5 <= by + bh)
        assert record["inter"] == int((mask & gt[e]).sum())
        assert record["union"] == int((mask | gt[e]).sum())
        assert record["on_background"] == (not objects[:, y, x].any())
        chosen = np_select(normalised[None], proposals)[0]
        ious = mask_utils.iou([rle(gt[e])], [rle(p) for p in proposals], [0] * 6)[0]
        oracle = int(np.argmax(ious))
        assert record["proposal"] == {
            "index": chosen,
            "inter": int((proposals[chosen] & gt[e]).sum()),
            "union": int((proposals[chosen] | gt[e]).sum()),
            "oracle_index": oracle,
            "oracle_inter": int((proposals[oracle] & gt[e]).sum()),
            "oracle_union": int((proposals[oracle] | gt[e]).sum()),
        }
    if protocol == "tris":
        assert records[2]["inter"] == 0 and records[2]["union"] == int(gt[2].sum())
        assert records[2]["peak"] == [0, 0]


def test_score_batch_resized_maps_agree_with_numpy_reference():
    rng = np.random.default_rng(11)
    height, width = 48, 64
    maps = rng.normal(size=(3, 8, 8)).astype(np.float32)
    gt, boxes = make_image(rng, 3, height, width)
    records = score_batch(
        torch.from_numpy(maps), height, width, torch.from_numpy(gt), torch.from_numpy(boxes)
    )
    for e, record in enumerate(records):
        reference = np_protocol_map(maps[e], height, width, "tris")
        assert record["peak"] == list(np_peak(reference))
        mask = reference > 1e-9
        assert abs(record["inter"] - int((mask & gt[e]).sum())) <= 2
        assert abs(record["union"] - int((mask | gt[e]).sum())) <= 2
        assert record["on_background"] is None and "proposal" not in record
    assert json.loads(json.dumps(records)) == records  # plain JSON types only


def test_score_batch_tests_boxes_by_the_protocol_rule():
    # one peak at (row 3, col 6) on the far edge of the integer box (2, 1, 4, 2): x in [2, 6]
    maps = torch.zeros(1, 8, 10)
    maps[0, 3, 6] = 1.0
    gt = torch.zeros(1, 8, 10, dtype=torch.bool)
    boxes = torch.tensor([[2.0, 1.0, 4.0, 2.0]], dtype=torch.float64)
    for protocol, expected in (("tris", True), ("sag", False)):
        record = score_batch(maps, 8, 10, gt, boxes, protocol)[0]
        assert record["peak"] == [3, 6]
        assert record["box_hit"] is expected, protocol


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_score_batch_rejects_non_finite_maps(bad):
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 1] = bad
    gt = torch.ones(1, 8, 8, dtype=torch.bool)
    with pytest.raises(PredictionError, match="NaN or inf"):
        score_batch(maps, 8, 8, gt, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))


def test_score_batch_rejects_wrong_map_shape():
    gt = torch.ones(1, 8, 8, dtype=torch.bool)
    with pytest.raises(PredictionError, match=r"\[E, h, w\]"):
        score_batch(torch.zeros(4, 4), 8, 8, gt, torch.zeros(1, 4))


# ---- metrics from records -----------------------------------------------------------------


def random_records(seed: int, count: int, proposals: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        union = int(rng.integers(0, 500))
        inter = int(rng.integers(0, union + 1))
        record = {
            "key": f"{i}:0:0",
            "point_hit": bool(rng.random() < 0.6),
            "box_hit": bool(rng.random() < 0.7),
            "inter": inter,
            "union": union,
            "on_background": None if rng.random() < 0.2 else bool(rng.random() < 0.1),
            "template": ["attribute", "spatial", "relation"][i % 3],
        }
        if proposals:
            pu = int(rng.integers(1, 500))
            ou = int(rng.integers(1, 500))
            record["proposal"] = {
                "index": 0, "inter": int(rng.integers(0, pu + 1)), "union": pu,
                "oracle_index": 1, "oracle_inter": int(rng.integers(0, ou + 1)), "oracle_union": ou,
            }
        records.append(record)
    return records


def np_metrics(records: list[dict]) -> dict[str, float]:
    def miou(i, u):
        i, u = np.asarray(i, float), np.asarray(u, float)
        return float(np.mean(np.where(u > 0, i / np.where(u > 0, u, 1), 0.0)))

    inter = [r["inter"] for r in records]
    union = [r["union"] for r in records]
    background = [r["on_background"] for r in records if r["on_background"] is not None]
    result = {
        "PointM": float(np.mean([r["point_hit"] for r in records])),
        "mIoU": miou(inter, union),
        "oIoU": sum(inter) / sum(union),
        "Hit": float(np.mean([r["box_hit"] for r in records])),
        "BackgroundPeaks": float(np.mean(background)),
    }
    if "proposal" in records[0]:
        p = [r["proposal"] for r in records]
        result["PropMIoU"] = miou([x["inter"] for x in p], [x["union"] for x in p])
        result["PropOIoU"] = sum(x["inter"] for x in p) / sum(x["union"] for x in p)
        result["OracleMIoU"] = miou([x["oracle_inter"] for x in p], [x["oracle_union"] for x in p])
        result["OracleOIoU"] = sum(x["oracle_inter"] for x in p) / sum(x["oracle_union"] for x in p)
    return result


def test_metric_set_from_records_matches_numpy_and_keys():
    records = random_records(12, 300)
    records[5]["union"], records[5]["inter"] = 0, 0  # an empty-union sample counts IoU 0
    got = metrics_from_records(records)
    expected = np_metrics(records)
    assert list(got) == [
        "PointM", "mIoU", "oIoU", "Hit", "BackgroundPeaks",
        "PropMIoU", "PropOIoU", "OracleMIoU", "OracleOIoU",
    ]
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    plain = metrics_from_records(random_records(13, 20, proposals=False))
    assert list(plain) == ["PointM", "mIoU", "oIoU", "Hit", "BackgroundPeaks"]


def test_proposal_metric_on_records_without_proposals_names_the_record():
    records = random_records(15, 3, proposals=True)
    del records[0]["proposal"]
    with pytest.raises(PredictionError, match="'0:0:0'.*proposal"):
        metrics_from_records(records)


def test_per_group_matches_numpy():
    records = random_records(16, 90, proposals=False)
    groups = per_group(records, key="template")
    assert list(groups) == ["attribute", "relation", "spatial"]
    for name, values in groups.items():
        members = [r for r in records if r["template"] == name]
        assert values["n"] == len(members) == 30
        assert values["PointM"] == pytest.approx(np.mean([r["point_hit"] for r in members]))
        assert values["mIoU"] == pytest.approx(np_metrics(members)["mIoU"], abs=1e-12)


def test_metrics_from_records_are_identical_for_interleaved_shards():
    """A sharded run gathers its records per sample, interleaved by rank: same numbers exactly."""
    records = random_records(18, 101)
    expected = metrics_from_records(records)
    for world in (2, 3, 8):
        gathered = [r for rank in range(world) for r in records[rank::world]]
        assert metrics_from_records(gathered) == expected
    assert metrics_from_records(records[::-1]) == expected


def test_select_proposal_fast_path_equals_scoring_every_proposal():
    """Non-negative maps take a shortcut; it must pick what argmax_p max(map * p) picks."""
    import numpy as np

    from refbench.metrics.functional import select_proposal

    rng = np.random.default_rng(7)
    for trial in range(40):
        maps = rng.integers(0, 4, size=(5, 9, 11)).astype(np.float32)  # many exact ties
        if trial % 5 == 0:
            maps[:] = 0.0
        proposals = rng.random((6, 9, 11)) < rng.uniform(0.0, 0.4)
        proposals[rng.integers(0, 6)] = False  # an empty proposal among them
        reference = (maps[:, None] * proposals[None]).reshape(5, 6, -1).max(axis=2).argmax(axis=1)
        chosen = select_proposal(torch.from_numpy(maps), torch.from_numpy(proposals))
        assert chosen.tolist() == reference.tolist()
