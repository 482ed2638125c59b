"""Standardise a phrase list to K phrases, as PCNet does for its training data (Sec. 3.1)."""

from __future__ import annotations

from collections.abc import Sequence


def pad_cues(phrases: Sequence[str], k: int) -> tuple[str, ...]:
    """Exactly `k` phrases: the first `k`, or the list with its last phrase repeated.

    PCNet Sec. 3.1 fixes K = 5 and "duplicate[s] some of the short phrases" when fewer come
    back; Sec. 4.3 says the repeats fill the *later* stages. The released generation script
    fills missing slots with the full expression. Our phrase lists end with the most complete
    phrase, so repeating the last one is both: later stages repeat, and they repeat the
    fullest description. Longer lists keep their first `k`, as the released loader does.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    cleaned = [p.strip() for p in phrases if p and p.strip()]
    if not cleaned:
        raise ValueError("cannot pad an empty phrase list; a backend must return one phrase")
    if len(cleaned) >= k:
        return tuple(cleaned[:k])
    return tuple(cleaned + [cleaned[-1]] * (k - len(cleaned)))
