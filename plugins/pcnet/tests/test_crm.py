"""CRM: the implicit per-pair visual state against dense tensors, and Eq. 2-4 written out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from refbench_pcnet.config import MODULATIONS
from refbench_pcnet.crm import (
    ConditionalReferringModule,
    CRMStage,
    ReferringModulation,
    VisualState,
    normalise_response,
)

B, E, K, HW, C = 2, 3, 2, 5, 8


def _state_with_update(generator: torch.Generator) -> VisualState:
    base = torch.randn(B, HW, C, generator=generator)
    gate1 = torch.rand(B, E, HW, generator=generator)
    gate2 = torch.rand(B, E, HW, generator=generator)
    return VisualState(base).add(gate1, torch.randn(B, E, C, generator=generator)).add(
        gate2, torch.randn(B, E, C, generator=generator)
    )


def test_visual_state_matches_its_dense_tensor() -> None:
    generator = torch.Generator().manual_seed(0)
    state = _state_with_update(generator)
    dense = state.materialise(E)  # [B, E, HW, C]
    # Dense by hand: base + sum gate * update.
    by_hand = state.base[:, None] + sum(
        g[..., None] * u[:, :, None, :] for g, u in zip(state.gates, state.updates)
    )
    torch.testing.assert_close(dense, by_hand)
    vectors = torch.randn(B, E, 4, C, generator=generator)
    torch.testing.assert_close(state.dot(vectors), torch.einsum("bepc,bekc->bekp", dense, vectors))
    weights = torch.rand(B, E, 4, HW, generator=generator)
    torch.testing.assert_close(
        state.weighted_sum(weights), torch.einsum("bekp,bepc->bekc", weights, dense)
    )
    torch.testing.assert_close(state.squared_norm(), dense.pow(2).sum(-1))
    linear = torch.nn.Linear(C, C)
    torch.testing.assert_close(
        state.projected_dot(linear, vectors),
        torch.einsum("bepc,bekc->bekp", linear(dense), vectors),
        atol=1e-5,
        rtol=1e-5,
    )


def _randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _dense_stage(stage: CRMStage, dense, query, own, bank, keep, initial):
    """Eq. 2-4 on dense tensors, written from the paper, for one CRM stage (VTA+TTA)."""
    m = stage.modulation
    # Eq. 2, own cue against the pair's V_n: A = softmax(q' W1 (V W2)^T / sqrt C).
    attention = torch.softmax(
        torch.einsum("bec,bepc->bep", m.vta_query(own), m.vta_key(dense)) / math.sqrt(C), dim=-1
    )
    own_hat = m.vta_mlp(torch.einsum("bep,bepc->bec", attention, m.vta_value(dense))) + own
    # Eq. 2, negative cues against the image's V_0.
    attention_b = torch.softmax(
        torch.einsum("bkc,bpc->bkp", m.vta_query(bank), m.vta_key(initial)) / math.sqrt(C), dim=-1
    )
    bank_hat = m.vta_mlp(torch.einsum("bkp,bpc->bkc", attention_b, m.vta_value(initial))) + bank
    # Eq. 3 over q̂ = [own; kept negatives].
    tokens = torch.cat([own_hat[:, :, None], bank_hat[:, None].expand(-1, E, -1, -1)], dim=2)
    mask = torch.cat([torch.ones(B, E, 1, dtype=torch.bool), keep], dim=2)
    logits = torch.einsum("bec,betc->bet", m.tta_query(query), m.tta_key(tokens)) / math.sqrt(C)
    attention_t = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    new_query = m.tta_mlp(torch.einsum("bet,betc->bec", attention_t, m.tta_value(tokens))) + query
    # Text-to-visual attention over {Q_{n+1}, null}, then the cosine of Eq. 4.
    r = stage.response
    position_query = r.query(dense)
    text_logit = torch.einsum("bepc,bec->bep", position_query, r.key(new_query))
    null_logit = torch.einsum("bepc,c->bep", position_query, r.null_key)
    share = torch.softmax(torch.stack([text_logit, null_logit], -1) / math.sqrt(C), -1)[..., 0]
    new_dense = dense + share[..., None] * r.mlp(r.value(new_query))[:, :, None, :]
    cosine = F.cosine_similarity(new_dense, new_query[:, :, None, :], dim=-1)
    return new_dense, new_query, cosine


def test_crm_stage_equals_the_dense_equations() -> None:
    torch.manual_seed(1)
    stage = CRMStage(C, "VTA+TTA", 1.0)
    _randomise(stage, 2)
    generator = torch.Generator().manual_seed(3)
    state = _state_with_update(generator)  # a later stage: V_n already depends on the pair
    initial = VisualState(state.base)
    query = torch.randn(B, E, C, generator=generator)
    own = torch.randn(B, E, C, generator=generator)
    bank = torch.randn(B, K, C, generator=generator)
    keep = torch.tensor([[[True, False], [False, True], [True, True]]] * B)
    new_state, new_query, cosine = stage(state, query, own, bank, keep, initial)
    dense, want_query, want_cosine = _dense_stage(
        stage, state.materialise(E), query, own, bank, keep, state.base
    )
    torch.testing.assert_close(new_query, want_query, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_state.materialise(E), dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cosine, want_cosine, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_every_modulation_variant_gives_queries_and_maps(modulation: str) -> None:
    torch.manual_seed(0)
    crm = ConditionalReferringModule(C, num_stages=3, modulation=modulation)
    visual = torch.randn(B, HW, C)
    query = torch.randn(B, E, C, requires_grad=True)
    cues = torch.randn(3, B, E, C)
    bank = torch.randn(3, K, C)
    keep = torch.ones(B, E, K, dtype=torch.bool)
    maps = crm(visual, query, cues, bank, keep)
    assert maps.shape == (B, E, 3, HW)
    assert torch.isfinite(maps).all() and maps.abs().max() <= 1 + 1e-5  # cosines
    maps.sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    without_bank = crm(visual, query, cues)
    assert without_bank.shape == (B, E, 3, HW)


def test_add_variant_adds_the_cue_and_tta_ignores_dropped_negatives() -> None:
    add = ReferringModulation(C, "ADD")
    state = VisualState(torch.randn(B, HW, C))
    query, own = torch.randn(B, E, C), torch.randn(B, E, C)
    torch.testing.assert_close(add(state, query, own), query + own)
    tta = ReferringModulation(C, "TTA")
    bank = torch.randn(B, K, C)
    dropped = torch.zeros(B, E, K, dtype=torch.bool)
    changed = bank + 100.0
    # With every negative masked out, the bank's values cannot matter.
    torch.testing.assert_close(
        tta(state, query, own, bank, dropped), tta(state, query, own, changed, dropped)
    )
    kept = torch.ones(B, E, K, dtype=torch.bool)
    assert not torch.allclose(tta(state, query, own, bank, kept), tta(state, query, own, changed, kept))


def test_normalise_response_is_relu_over_max() -> None:
    logits = torch.tensor([[-1.0, 0.5, 2.0, 0.0]])
    torch.testing.assert_close(
        normalise_response(logits), torch.tensor([[0.0, 0.25, 1.0, 0.0]]), atol=1e-5, rtol=0
    )
