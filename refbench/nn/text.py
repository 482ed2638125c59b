"""A word-level text encoder for training from scratch (SynthRef, CPU): hashed words + BiGRU.

A randomly initialised CLIP text transformer (49 408 BPE tokens, causal attention, EOT pooling)
is slow to fit from image-text pairs alone; on SynthRef it often scored every sentence alike.
This encoder embeds each lower-cased word through a fixed hash (CRC-32, so the same text gives
the same ids on every machine and in every process, unlike Python's salted `hash`) and reads
the words with a bidirectional GRU; the sentence embedding is the two final hidden states.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_WORD = re.compile(r"[a-z0-9]+")


def word_ids(text: str, buckets: int) -> list[int]:
    """The hashed ids (1..buckets-1; 0 is padding) of the words of `text`, at least one."""
    words = _WORD.findall(text.lower()) or [""]
    return [1 + zlib.crc32(word.encode("utf-8")) % (buckets - 1) for word in words]


class WordGRUEncoder(nn.Module):
    """[T] texts -> [T, out_dim]: hashed word embeddings read by a bidirectional GRU.

    out_dim must be even (two directions of out_dim / 2 each).
    """

    def __init__(self, out_dim: int, buckets: int = 4096, embed_dim: int = 64) -> None:
        super().__init__()
        if out_dim < 2 or out_dim % 2:
            raise ValueError(f"out_dim must be even and positive, got {out_dim}")
        if buckets < 2:
            raise ValueError(f"buckets must be at least 2, got {buckets}")
        self.buckets = buckets
        self.embedding = nn.Embedding(buckets, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, out_dim // 2, batch_first=True, bidirectional=True)
        self.out_dim = out_dim

    def forward(self, texts: Sequence[str]) -> Tensor:
        """[T] texts -> [T, out_dim] (not normalised)."""
        if isinstance(texts, str):
            raise TypeError("WordGRUEncoder takes a list of texts, not a single string")
        device = self.embedding.weight.device
        ids = [word_ids(text, self.buckets) for text in texts]
        lengths = torch.tensor([len(row) for row in ids])
        padded = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for row, values in enumerate(ids):
            padded[row, : len(values)] = torch.tensor(values)
        embedded = self.embedding(padded.to(device))
        packed = nn.utils.rnn.pack_padded_sequence(
            embedded, lengths, batch_first=True, enforce_sorted=False
        )
        _, hidden = self.gru(packed)  # [2, T, out_dim / 2]
        return torch.cat([hidden[0], hidden[1]], dim=-1)
