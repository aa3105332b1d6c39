"""The LCM timestep schedule, the strength -> t_index mapping and per-slot coefficients.

The stream uses the 50-step LCM schedule: index i (0..49) is timestep 999 - 20*i with 1000
training steps. Index 0 is pure noise (txt2img); index 49 (t=19) is almost the clean input.

Strength mapping (our choice, monotone): strength s in [0, 1] and n steps give a start index
round((1 - s) * 49) (s=1 -> index 0, pure noise; s=0 -> index 49, keep the input). With n > 1
the n indices are spread evenly from the start to the end index max(45, start + n - 1),
clamped to 49 (45 is t=99, upstream's usual last step), then pushed apart so they are
distinct and increasing. If the start is too close to 49 for n distinct indices, it moves
down to 49 - (n - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .limits import NUM_INDEXES, STEPS

LAST_STEP_INDEX = 45


def strength_to_t_index(strength: float, steps: int = 1) -> tuple[int, ...]:
    """Map a 0..1 strength and a step count to strictly increasing t_index values."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength: must be from 0 to 1, got {strength!r}")
    if not STEPS.low <= steps <= STEPS.high:
        raise ValueError(f"steps: must be from {STEPS.low} to {STEPS.high}, got {steps!r}")
    top = NUM_INDEXES - 1
    start = min(round((1.0 - strength) * top), top - (steps - 1))
    if steps == 1:
        return (start,)
    end = min(max(LAST_STEP_INDEX, start + steps - 1), top)
    raw = [start + (end - start) * k / (steps - 1) for k in range(steps)]
    out: list[int] = []
    for k, value in enumerate(raw):
        idx = max(round(value), out[-1] + 1 if out else start)
        out.append(min(idx, top - (steps - 1 - k)))
    return tuple(out)


def make_lcm(scheduler_config: dict):
    """diffusers' LCMScheduler from any SD scheduler config (keys LCM does not know are dropped)."""
    import inspect

    from diffusers import LCMScheduler

    known = set(inspect.signature(LCMScheduler.__init__).parameters)
    return LCMScheduler.from_config({k: v for k, v in dict(scheduler_config).items() if k in known})


def lcm_timesteps(scheduler_config: dict) -> list[int]:
    """The 50 LCM timesteps for a model's scheduler config (as diffusers' LCMScheduler makes them)."""
    lcm = make_lcm(scheduler_config)
    lcm.set_timesteps(NUM_INDEXES)
    return [int(t) for t in lcm.timesteps]


@dataclass
class SlotCoefficients:
    """Per-step values for a t_index list (each shape (n,), float64 on CPU; timesteps int64)."""

    timesteps: torch.Tensor
    alpha: torch.Tensor  # sqrt(alphas_cumprod[t])
    beta: torch.Tensor  # sqrt(1 - alphas_cumprod[t])
    c_skip: torch.Tensor
    c_out: torch.Tensor


def slot_coefficients(scheduler_config: dict, t_index_list: tuple[int, ...]) -> SlotCoefficients:
    """Timesteps and the LCM boundary scalings for each selected index, from diffusers' LCMScheduler."""
    lcm = make_lcm(scheduler_config)
    lcm.set_timesteps(NUM_INDEXES)
    ts = [int(lcm.timesteps[i]) for i in t_index_list]
    acp = lcm.alphas_cumprod.double()
    skips, outs = zip(*(lcm.get_scalings_for_boundary_condition_discrete(t) for t in ts))
    return SlotCoefficients(
        timesteps=torch.tensor(ts, dtype=torch.int64),
        alpha=torch.stack([acp[t].sqrt() for t in ts]),
        beta=torch.stack([(1 - acp[t]).sqrt() for t in ts]),
        c_skip=torch.tensor([float(s) for s in skips], dtype=torch.float64),
        c_out=torch.tensor([float(o) for o in outs], dtype=torch.float64),
    )
