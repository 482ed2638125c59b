"""The Conditional Referring Module (PCNet Sec. 3.2, Eq. 2-4; App. A.3; Table 4 variants).

Shapes: B images, E text slots per image (each slot a referring text evaluated on that
image), K bank cues (the stage's cues of the batch's positive texts), T = 1 + K cue tokens,
hw positions, C channels.

The text-to-visual attention makes V_{n+1} depend on the (image, text) pair. Written out, the
update is rank one per pair (V_{n+1} = V_n + gate ⊗ update), so `VisualState` keeps V_n as
the per-image V_0 plus a list of (gate [B, E, hw], update [B, E, C]) and never materialises
[B, E, hw, C]; every use of V_n is a linear map followed by a contraction, which it computes
exactly. `VisualState.materialise` gives the dense tensor for tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refbench_pcnet.config import MODULATIONS


class VisualState:
    """V_n = base + sum_k gate_k ⊗ update_k for every (image, slot) pair.

    base: [B, hw, C] (V_0, shared by all slots of an image); gates: [B, E, hw]; updates:
    [B, E, C].
    """

    def __init__(
        self, base: Tensor, gates: tuple[Tensor, ...] = (), updates: tuple[Tensor, ...] = ()
    ) -> None:
        assert base.ndim == 3, f"base must be [B, hw, C], got {tuple(base.shape)}"
        self.base = base
        self.gates = gates
        self.updates = updates

    def add(self, gate: Tensor, update: Tensor) -> VisualState:
        """V + gate ⊗ update: gate [B, E, hw], update [B, E, C]."""
        return VisualState(self.base, (*self.gates, gate), (*self.updates, update))

    def dot(self, vectors: Tensor) -> Tensor:
        """<V_p, x> for every position: vectors [B, E', K, C] -> [B, E', K, hw] (E' = 1 or E)."""
        out = torch.einsum("bpc,bekc->bekp", self.base, vectors)
        for gate, update in zip(self.gates, self.updates):
            coefficient = (update[:, :, None, :] * vectors).sum(-1)  # [B, E, K]
            out = out + gate[:, :, None, :] * coefficient[..., None]
        return out

    def projected_dot(self, linear: nn.Linear, vectors: Tensor) -> Tensor:
        """<linear(V_p), x>: [B, E', K, C] -> [B, E', K, hw], without projecting V."""
        out = self.dot(vectors @ linear.weight)
        if linear.bias is not None:
            out = out + (vectors @ linear.bias)[..., None]
        return out

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """sum_p w_p V_p: weights [B, E', K, hw] -> [B, E', K, C]."""
        out = torch.einsum("bekp,bpc->bekc", weights, self.base)
        for gate, update in zip(self.gates, self.updates):
            coefficient = (weights * gate[:, :, None, :]).sum(-1)  # [B, E, K]
            out = out + coefficient[..., None] * update[:, :, None, :]
        return out

    def squared_norm(self) -> Tensor:
        """|V_p|^2 per slot: [B, E, hw] (E = 1 while no update has been added)."""
        out = self.base.pow(2).sum(-1)[:, None]  # [B, 1, hw]
        for k, (gate_k, update_k) in enumerate(zip(self.gates, self.updates)):
            cross = torch.einsum("bpc,bec->bep", self.base, update_k)
            out = out + 2 * gate_k * cross
            for gate_l, update_l in zip(self.gates[:k], self.updates[:k]):
                out = out + 2 * gate_k * gate_l * (update_k * update_l).sum(-1)[..., None]
            out = out + gate_k.pow(2) * update_k.pow(2).sum(-1)[..., None]
        return out

    def materialise(self, slots: int) -> Tensor:
        """The dense V_n: [B, E, hw, C] (for tests and figures)."""
        out = self.base[:, None].expand(-1, slots, -1, -1)
        for gate, update in zip(self.gates, self.updates):
            out = out + gate[..., None] * update[:, :, None, :]
        return out


class MLP(nn.Module):
    """Linear-GELU-Linear: [..., C] -> [..., C]."""

    def __init__(self, dim: int, ratio: float = 1.0) -> None:
        super().__init__()
        hidden = max(1, int(round(dim * ratio)))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """[..., C] -> [..., C]."""
        return self.net(x)


class ReferringModulation(nn.Module):
    """Q_n -> Q_{n+1} conditioned on the stage's cue (Eq. 2-3), in one of Table 4's variants.

    ADD: Q + q_n.  TTA: text-to-text attention of Q over q'_n.  VTA+ADD: Q + q̂_n (the own
    cue after vision-to-text attention).  VTA+TTA (the paper's): Eq. 2 then Eq. 3.
    """

    def __init__(self, dim: int, modulation: str = "VTA+TTA", mlp_ratio: float = 1.0) -> None:
        super().__init__()
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation {modulation!r} is not one of {MODULATIONS}")
        self.modulation = modulation
        self.dim = dim
        self.use_vta = modulation.startswith("VTA")
        self.use_tta = modulation.endswith("TTA")
        if self.use_vta:  # Eq. 2: W_1^{q'}, W_2^V, W_3^V
            self.vta_query = nn.Linear(dim, dim)
            self.vta_key = nn.Linear(dim, dim)
            self.vta_value = nn.Linear(dim, dim)
            self.vta_mlp = MLP(dim, mlp_ratio)
        if self.use_tta:  # Eq. 3: W_1^Q, W_2^{q̂}, W_3^{q̂}
            self.tta_query = nn.Linear(dim, dim)
            self.tta_key = nn.Linear(dim, dim)
            self.tta_value = nn.Linear(dim, dim)
            self.tta_mlp = MLP(dim, mlp_ratio)

    def vision_to_text(self, visual: VisualState, tokens: Tensor) -> Tensor:
        """Eq. 2: q̂ = MLP(softmax(q' W1 (V W2)^T / sqrt C) V W3) + q': [B, E', T, C] -> same."""
        logits = visual.projected_dot(self.vta_key, self.vta_query(tokens)) / math.sqrt(self.dim)
        attention = logits.softmax(dim=-1)  # over positions
        # The softmax weights sum to 1, so the bias of W3 passes through the weighted sum.
        attended = self.vta_value(visual.weighted_sum(attention))
        return self.vta_mlp(attended) + tokens

    def forward(
        self,
        visual: VisualState,
        query: Tensor,
        own_cue: Tensor,
        bank: Tensor | None = None,
        bank_keep: Tensor | None = None,
        initial: VisualState | None = None,
    ) -> Tensor:
        """Q_{n+1} [B, E, C] from Q_n [B, E, C] and the slot's own cue q_n [B, E, C].

        bank: [B, K, C] the negative cues (the other images' cues at this stage), or None;
        bank_keep: [B, E, K] bool, which bank cues join slot e's q'_n (its own text's cue is
        left out of the bank since it is already the first token); initial: V_0, which the
        bank cues attend to (see the module docstring of `ConditionalReferringModule`).
        """
        own = own_cue[:, :, None, :]  # [B, E, 1, C]
        if self.use_vta:
            own = self.vision_to_text(visual, own)
            if bank is not None:
                assert initial is not None, "the bank cues attend to V_0"
                bank = self.vision_to_text(initial, bank[:, None])[:, 0]  # [B, K, C]
        own = own[:, :, 0]  # [B, E, C]
        if not self.use_tta:  # ADD, VTA+ADD
            return query + own
        scale = math.sqrt(self.dim)
        text_query = self.tta_query(query)  # [B, E, C]
        own_logit = (text_query * self.tta_key(own)).sum(-1, keepdim=True) / scale  # [B, E, 1]
        own_value = self.tta_value(own)
        if bank is None:
            attended = own_value  # a softmax over one token is 1
        else:
            assert bank_keep is not None, "bank_keep is needed with a bank"
            # Keys and values of the bank are per image; they are never copied per slot.
            bank_logit = torch.einsum("bec,bkc->bek", text_query, self.tta_key(bank)) / scale
            bank_logit = bank_logit.masked_fill(~bank_keep, float("-inf"))
            attention = torch.cat([own_logit, bank_logit], dim=-1).softmax(dim=-1)
            attended = attention[..., :1] * own_value + torch.einsum(
                "bek,bkc->bec", attention[..., 1:], self.tta_value(bank)
            )
        return self.tta_mlp(attended) + query


class ResponseGeneration(nn.Module):
    """Text-to-visual attention V_n -> V_{n+1} (Sec. 3.2), then the map logits of Eq. 4.

    Each position attends over two keys: the slot's Q_{n+1} and a learned null key (with the
    text alone, a softmax over one key is 1 everywhere and the update would not depend on the
    position). V_{n+1,p} = V_{n,p} + a_p MLP(Q_{n+1} W_v), a_p = the text's attention share.
    """

    def __init__(self, dim: int, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        self.query = nn.Linear(dim, dim)  # on visual positions
        self.key = nn.Linear(dim, dim)  # on the text
        self.value = nn.Linear(dim, dim)
        self.null_key = nn.Parameter(torch.zeros(dim))
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, visual: VisualState, text: Tensor) -> VisualState:
        """V_{n+1} from V_n and Q_{n+1} [B, E, C]."""
        scale = math.sqrt(self.dim)
        text_logit = visual.projected_dot(self.query, self.key(text)[:, :, None])[:, :, 0]
        null = self.null_key.to(text.dtype).expand(text.shape[0], 1, 1, -1)
        null_logit = visual.projected_dot(self.query, null)[:, :, 0]
        gate = torch.sigmoid((text_logit - null_logit) / scale)  # [B, E, hw]
        return visual.add(gate, self.mlp(self.value(text)))


def cosine_map(visual: VisualState, text: Tensor) -> Tensor:
    """cos(V_p, Q) for every slot: text [B, E, C] -> [B, E, hw]."""
    dot = visual.dot(text[:, :, None])[:, :, 0]
    norm = visual.squared_norm().clamp_min(1e-12).sqrt()
    return dot / (norm * text.norm(dim=-1, keepdim=True).clamp_min(1e-6))


def normalise_response(logits: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 4's Norm(ReLU(.)): each map divided by its max after ReLU, in [0, 1]: [..., hw]."""
    positive = F.relu(logits)
    return positive / (positive.amax(dim=-1, keepdim=True) + eps)


class CRMStage(nn.Module):
    """One CRM: referring modulation then response-map generation."""

    def __init__(self, dim: int, modulation: str, mlp_ratio: float) -> None:
        super().__init__()
        self.modulation = ReferringModulation(dim, modulation, mlp_ratio)
        self.response = ResponseGeneration(dim, mlp_ratio)

    def forward(
        self,
        visual: VisualState,
        query: Tensor,
        own_cue: Tensor,
        bank: Tensor | None,
        bank_keep: Tensor | None,
        initial: VisualState | None = None,
    ) -> tuple[VisualState, Tensor, Tensor]:
        """(V_{n+1}, Q_{n+1} [B, E, C], cosine map [B, E, hw])."""
        query = self.modulation(visual, query, own_cue, bank, bank_keep, initial)
        visual = self.response(visual, query)
        return visual, query, cosine_map(visual, query)


class ConditionalReferringModule(nn.Module):
    """N consecutive CRMs; stage n reads cue n and returns a map per slot.

    Training (Eq. 2): q'_n = [own cue; the L other images' cues at stage n]. The own cue
    attends to the slot's V_n; the L negative cues attend to the image's V_0 (before any text
    modulation): with V_n per (image, text) pair, attending every negative to every pair's
    V_n costs O(B^3) tokens, and V_0 keeps a negative from seeing another text's modulation.
    At stage 0 the two are the same. Inference has no bank: q'_n is the own cue alone.
    """

    def __init__(
        self, dim: int, num_stages: int, modulation: str = "VTA+TTA", mlp_ratio: float = 1.0
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(CRMStage(dim, modulation, mlp_ratio) for _ in range(num_stages))

    def forward(
        self,
        visual: Tensor,
        query: Tensor,
        cues: Tensor,
        bank: Tensor | None = None,
        bank_keep: Tensor | None = None,
    ) -> Tensor:
        """Cosine maps of every stage: [B, E, N, hw].

        visual: V_0 [B, hw, C]; query: Q_0 [B, E, C]; cues: [N, B, E, C] (slot e's cue n);
        bank: [N, K, C] the positive texts' cues per stage, or None; bank_keep: [B, E, K].
        """
        batch, slots, dim = query.shape
        assert visual.shape[0] == batch and visual.shape[2] == dim, (visual.shape, query.shape)
        assert cues.shape == (len(self.stages), batch, slots, dim), (cues.shape, query.shape)
        initial = state = VisualState(visual)
        maps = []
        for index, stage in enumerate(self.stages):
            stage_bank = None if bank is None else bank[index][None].expand(batch, -1, -1)
            state, query, cosine = stage(state, query, cues[index], stage_bank, bank_keep, initial)
            maps.append(cosine)
        return torch.stack(maps, dim=2)
