"""RaS (Eq. 5-7) and IaD (Eq. 8-9) against direct re-computations on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from refbench_pcnet.losses import (
    alignment_scores,
    background_share,
    iad_loss,
    localization_ambiguity,
    proposals_to_map,
    ras_loss,
    region_pool,
    soft_iou,
    straight_through_index,
)

from refbench.nn import contrastive_loss

# A 1 x 6 "image": three proposals (left pair, middle pair, right pair) and one padding slot.
PROPOSALS = np.array(
    [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]], float
)
VALID = np.array([True, True, True, False])


def _np_iou(r: np.ndarray, m: np.ndarray) -> float:
    return float((r * m).sum() / (r + m - r * m).sum())


def _np_ambiguity(r: np.ndarray, mode: str = "max") -> float:
    """Eq. 5-6 by hand: best proposal by max (or mean) of R over it, background = the rest."""
    scores = []
    for m, ok in zip(PROPOSALS, VALID):
        if not ok:
            scores.append(-np.inf)
        elif mode == "max":
            scores.append((r * m).max())
        else:
            scores.append((r * m).sum() / m.sum())
    best = int(np.argmax(scores))
    background = np.zeros_like(r)
    for p, (m, ok) in enumerate(zip(PROPOSALS, VALID)):
        if ok and p != best:
            background = np.maximum(background, m)
    return 1 - (_np_iou(r, PROPOSALS[best]) - _np_iou(r, background))


def _t(array) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=torch.float32)


def test_alignment_scores_max_and_avg() -> None:
    r = np.array([0.2, 0.9, 0.5, 0.1, 0.0, 0.4])
    got_max = alignment_scores(_t(r), _t(PROPOSALS), "max")
    got_avg = alignment_scores(_t(r), _t(PROPOSALS), "avg")
    np.testing.assert_allclose(got_max.numpy(), [0.9, 0.5, 0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(got_avg.numpy(), [0.55, 0.3, 0.2, 0.0], atol=1e-6)


def test_soft_iou_and_ambiguity_match_a_hand_computation() -> None:
    r = np.array([1.0, 0.5, 0.2, 0.0, 0.0, 0.3])
    assert soft_iou(_t(r), _t(PROPOSALS[0])).item() == pytest.approx(1.5 / 2.5)  # union: 1 + 1 + 0.2 + 0.3
    for mode in ("max", "avg"):
        got = localization_ambiguity(
            _t(r)[None], _t(PROPOSALS)[None], torch.tensor(VALID)[None], mode
        )
        assert got.item() == pytest.approx(_np_ambiguity(r, mode), abs=1e-6)
    # A map on exactly one proposal has ambiguity 0; one on every proposal has ambiguity ~1.
    exact = _t(PROPOSALS[1])[None]
    assert localization_ambiguity(exact, _t(PROPOSALS)[None], torch.tensor(VALID)[None]).item() == (
        pytest.approx(0.0, abs=1e-6)
    )


def _stage_maps(*maps: list[float]) -> torch.Tensor:
    return _t(np.stack(maps))[None]  # [1, N, hw]


def test_ras_hinge_is_zero_when_ambiguity_falls_and_positive_when_it_rises() -> None:
    spread = [1.0, 1.0, 1.0, 1.0, 0.8, 0.8]  # everything lit: ambiguous
    middle = [0.3, 0.0, 1.0, 0.6, 0.2, 0.0]  # mostly the middle pair
    exact = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]  # exactly the middle pair
    proposals, valid = _t(PROPOSALS)[None], torch.tensor(VALID)[None]
    ambiguities = [_np_ambiguity(np.array(m)) for m in (spread, middle, exact)]
    assert ambiguities[0] > ambiguities[1] > ambiguities[2]

    falling, amb = ras_loss(_stage_maps(spread, middle, exact), proposals, valid)
    assert falling.item() == 0.0
    np.testing.assert_allclose(amb[0].numpy(), ambiguities, atol=1e-6)

    rising, _ = ras_loss(_stage_maps(exact, middle, spread), proposals, valid)
    # Eq. 7: 1/(N-1) * sum_n max(0, S_{n+1} - S_n).
    want = ((ambiguities[1] - ambiguities[2]) + (ambiguities[0] - ambiguities[1])) / 2
    assert rising.item() == pytest.approx(want, abs=1e-6)
    assert rising.item() > 0.1

    mixed, _ = ras_loss(_stage_maps(middle, spread, exact), proposals, valid)
    assert mixed.item() == pytest.approx((ambiguities[0] - ambiguities[1]) / 2, abs=1e-6)


def test_ras_gradient_flows_into_the_maps_and_one_stage_gives_zero() -> None:
    maps = _stage_maps([0.3, 0.0, 1.0, 0.6, 0.2, 0.0], [1.0, 1.0, 1.0, 1.0, 0.8, 0.8])
    maps.requires_grad_(True)
    loss, _ = ras_loss(maps, _t(PROPOSALS)[None], torch.tensor(VALID)[None])
    loss.backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0
    single, _ = ras_loss(maps[:, :1], _t(PROPOSALS)[None], torch.tensor(VALID)[None])
    assert single.item() == 0.0


def test_straight_through_index_is_one_hot_forward_and_identity_backward() -> None:
    scores = torch.tensor([[0.2, 0.7, 0.4, 0.9]], requires_grad=True)
    valid = torch.tensor([[True, True, True, False]])  # the padded slot never wins
    y = straight_through_index(scores, valid)
    np.testing.assert_array_equal(y.detach().numpy(), [[0.0, 1.0, 0.0, 0.0]])
    weights = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    (y * weights).sum().backward()
    # Eq. 8: d y / d S is the identity, as if y were the soft scores themselves.
    torch.testing.assert_close(scores.grad, weights)


def test_iad_value_and_gradient_match_eq_8_9_written_out() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 6, generator=generator)  # [B, N, hw]
    distinct = torch.rand(2, 2, 3, 6, generator=generator)  # [B, D, N, hw]
    distinct_valid = torch.tensor([[True, True], [True, False]])
    proposals = _t(PROPOSALS)[None].expand(2, -1, -1)
    valid = torch.tensor(VALID)[None].expand(2, -1)

    a = target.clone().requires_grad_(True)
    d = distinct.clone().requires_grad_(True)
    got = iad_loss(a, d, distinct_valid, proposals, valid, "max")
    got.backward()

    a2 = target.clone().requires_grad_(True)
    d2 = distinct.clone().requires_grad_(True)
    terms = []
    for b in range(2):
        for k in range(2):
            if not distinct_valid[b, k]:
                continue
            per_stage = []
            for n in range(3):
                ys = []
                for maps in (a2[b, n], d2[b, k, n]):
                    s = torch.stack([(maps * proposals[b, p]).max() for p in range(3)])
                    hard = torch.zeros(3)
                    hard[int(s.argmax())] = 1.0
                    ys.append(hard + s - s.detach())
                per_stage.append(1 - ((ys[0] - ys[1]) ** 2).sum())
            terms.append(torch.stack(per_stage).mean())
    want = torch.stack(terms).mean()
    want.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(d.grad, d2.grad)


def test_iad_is_one_for_the_same_proposal_and_minus_one_for_different_ones() -> None:
    proposals, valid = _t(PROPOSALS)[None], torch.tensor(VALID)[None]
    left = _t([1.0, 0.5, 0, 0, 0, 0])[None, None]  # [1, N=1, hw]
    right = _t([0, 0, 0, 0, 0.5, 1.0])[None, None]
    same = iad_loss(left, left[:, None], torch.tensor([[True]]), proposals, valid)
    apart = iad_loss(left, right[:, None], torch.tensor([[True]]), proposals, valid)
    assert same.item() == pytest.approx(1.0)
    assert apart.item() == pytest.approx(-1.0)


def test_proposals_are_area_averaged_onto_the_map_grid() -> None:
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True
    masks[0, 0, 2, 2] = True
    soft, valid = proposals_to_map(masks, (2, 2))
    np.testing.assert_allclose(soft[0, 0].numpy(), [1.0, 0.0, 0.0, 0.25])
    assert valid.tolist() == [[True, False]]


def test_paper_iad_has_no_gradient_when_both_texts_pick_the_same_proposal() -> None:
    proposals, valid = _t(PROPOSALS)[None], torch.tensor(VALID)[None]
    a = _t([1.0, 0.5, 0, 0, 0.2, 0])[None, None].requires_grad_(True)
    d = _t([0.9, 0.6, 0, 0, 0.3, 0])[None, None, None].requires_grad_(True)
    iad_loss(a, d, torch.tensor([[True]]), proposals, valid, form="paper").backward()
    # Eq. 9's gradient is 2 (y_a - y_d) = one-hot(a) - one-hot(d) = 0 here: nothing moves.
    assert a.grad.abs().max().item() < 1e-6 and d.grad.abs().max().item() < 1e-6


def test_exclusive_iad_is_the_same_proposal_probability_and_separates_collapsed_maps() -> None:
    proposals, valid = _t(PROPOSALS)[None], torch.tensor(VALID)[None]
    ra = np.array([1.0, 0.5, 0, 0, 0.2, 0])
    rd = np.array([0.9, 0.6, 0, 0, 0.3, 0])
    tau = 0.1

    def softmax_scores(r: np.ndarray) -> np.ndarray:
        s = np.array([(r * m).max() for m in PROPOSALS[:3]]) / tau  # padding slot left out
        e = np.exp(s - s.max())
        return e / e.sum()

    want = float((softmax_scores(ra) * softmax_scores(rd)).sum())
    a = _t(ra)[None, None].requires_grad_(True)
    d = _t(rd)[None, None, None].requires_grad_(True)
    got = iad_loss(a, d, torch.tensor([[True]]), proposals, valid, form="exclusive", temperature=tau)
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    # Both maps peak on the left proposal: descending the loss lowers both there.
    assert a.grad[0, 0, 0].item() > 0 and d.grad[0, 0, 0, 0].item() > 0


def test_contrastive_loss_matches_a_numpy_infonce_with_ignored_pairs() -> None:
    scores = np.array([[2.0, 0.5, 1.0], [0.1, 1.5, -0.3], [0.7, 0.2, 0.9]])
    ignore = np.array([[False, True, False], [False, False, False], [False, False, False]])

    def ce(rows: np.ndarray, mask: np.ndarray) -> float:
        out = []
        for i, (row, m) in enumerate(zip(rows, mask)):
            kept = row[~m]
            out.append(np.log(np.exp(kept).sum()) - row[i])
        return float(np.mean(out))

    want = 0.5 * (ce(scores, ignore) + ce(scores.T, ignore.T))
    got = contrastive_loss(_t(scores), torch.tensor(ignore))
    assert got.item() == pytest.approx(want, rel=1e-5)
    plain = 0.5 * (ce(scores, ~np.ones_like(ignore)) + ce(scores.T, ~np.ones_like(ignore)))
    assert contrastive_loss(_t(scores)).item() == pytest.approx(plain, rel=1e-5)


def test_region_pool_is_the_mean_plus_the_best_proposal_mean() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 6))  # 2 images x 3 texts
    proposals = np.stack([PROPOSALS, PROPOSALS[[2, 0, 1, 3]]])
    valid = np.stack([VALID, np.array([True, False, False, False])])
    got = region_pool(_t(maps), _t(proposals), torch.tensor(valid)).numpy()
    for b in range(2):
        for t in range(3):
            region = max((maps[b, t] * m).sum() / m.sum()
                         for m, ok in zip(proposals[b], valid[b]) if ok)
            assert got[b, t] == pytest.approx(maps[b, t].mean() + region, rel=1e-5)
    # an image without proposals falls back to the pixel max
    none = region_pool(_t(maps), _t(proposals), torch.zeros(2, 4, dtype=torch.bool)).numpy()
    np.testing.assert_allclose(none, maps.mean(-1) + maps.max(-1), rtol=1e-5)


def test_background_share_is_the_mass_outside_every_valid_proposal() -> None:
    maps = np.array([[[0.0, 1.0, 0.0, 0.0, 0.5, 0.5]], [[1.0, 0.0, 0.0, 0.0, 0.0, 1.0]]])
    valid = np.stack([np.array([True, False, True, False]), np.array([True, True, False, False])])
    # image 0: union = cells 0, 1, 4, 5 -> nothing outside; image 1: union = cells 0-3 -> half
    got = background_share(_t(maps), _t(np.stack([PROPOSALS, PROPOSALS])), torch.tensor(valid))
    assert got.item() == pytest.approx((0.0 + 0.5) / 2)
    maps_t = _t(maps).requires_grad_(True)
    background_share(maps_t, _t(np.stack([PROPOSALS, PROPOSALS])), torch.tensor(valid)).backward()
    assert maps_t.grad[1, 0, 5] > 0 > maps_t.grad[1, 0, 0]  # mass off the proposals is penalised
    # images without a proposal are left out; none at all gives 0
    empty = torch.zeros(2, 4, dtype=torch.bool)
    assert background_share(_t(maps), _t(np.stack([PROPOSALS] * 2)), empty).item() == 0.0
