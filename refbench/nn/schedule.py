"""Polynomial learning-rate decay with optional linear warm-up (PCNet App. A.4; TRIS)."""

from __future__ import annotations

from collections.abc import Callable

from refbench.errors import ConfigError


def poly_lr_lambda(
    total_steps: int, power: float = 0.9, warmup_steps: int = 0, final_factor: float = 0.0
) -> Callable[[int], float]:
    """The factor on the base learning rate at step t, for torch.optim.lr_scheduler.LambdaLR.

    Warm-up (t < W): (t + 1) / W. Then, with u = min(1, (t - W) / (T - W)):
    final_factor + (1 - final_factor) * (1 - u)^power; final_factor = end_lr / base_lr gives
    the end-learning-rate form of PolynomialLRDecay that TRIS uses (0 decays to zero).
    """
    if total_steps <= 0:
        raise ConfigError(f"poly schedule total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(
            f"poly schedule warmup_steps must be in [0, total_steps={total_steps}), "
            f"got {warmup_steps}"
        )
    if power <= 0:
        raise ConfigError(f"poly schedule power must be positive, got {power}")
    if not 0.0 <= final_factor <= 1.0:
        raise ConfigError(f"poly schedule final_factor must be in [0, 1], got {final_factor}")
    decay_steps = total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return final_factor + (1.0 - final_factor) * (1.0 - progress) ** power

    return factor
