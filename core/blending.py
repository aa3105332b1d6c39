"""Blending of prompt embeddings and seed noise: weighted lists, linear or slerp, and transitions.

Pure torch functions, computed in float32 (callers cast to the model dtype). No host syncs and no
branch on tensor values (degenerate cases are chosen with `torch.where`), so a blend may also run
inside a captured step. The formulas, for N items x_i with weights w_i >= 0 (sum > 0):

- weights are normalised: p_i = w_i / sum_j w_j.
- linear:  blend = sum_i p_i x_i.
- slerp of two vectors a, b at t in [0, 1] (the angle is taken along `dim`, per vector):
      theta = arccos(<a, b> / (|a| |b|)),
      slerp(a, b, t) = (sin((1 - t) theta) a + sin(t theta) b) / sin(theta),
  falling back to (1 - t) a + t b where sin(theta) < 1e-3 or a vector has (almost) zero norm
  (parallel, antiparallel or zero vectors: the arc is undefined there).
- slerp of N items is SEQUENTIAL slerp: acc_1 = x_1, c_1 = p_1; for i = 2..N:
      c_i = c_{i-1} + p_i,  acc_i = slerp(acc_{i-1}, x_i, p_i / c_i)   (t = 0 where c_i = 0).
  For N = 2 this is slerp(x_1, x_2, p_2). With lerp in place of slerp the same recursion gives
  exactly the linear blend, so the two methods agree on the weight semantics; unlike the linear
  blend, sequential slerp depends on the order of the items when N >= 3 and they are not parallel.
- prompt embeddings (1, 77, D) blend per token (dim = -1); SDXL pooled embeddings (1, P) likewise.
- seed noise (B, C, h, w) blends per sample over all its elements (each row flattened):
  slerp keeps unit variance because independent high-dimensional Gaussians are nearly orthogonal
  (theta = pi/2 + O(1/sqrt(C h w)): slerp ~ cos(t pi/2) a + sin(t pi/2) b); the linear method is
  the variance-preserving sum  sum_i p_i n_i / sqrt(sum_i p_i^2), exactly N(0, 1) for independent
  N(0, 1) inputs (a plain weighted mean would shrink the variance to sum_i p_i^2).
- a transition from `start` to `target` at t in [0, 1] is the two-item blend [(start, 1 - t), (target, t)].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .limits import BLEND_METHODS as METHODS
from .weighted import weights_problem

Tensor = torch.Tensor
_EPS = 1e-7  # norms below this count as zero
_ARC_EPS = 1e-3  # sin(theta) below this: float32 cos near +-1 leaves theta uncertain by ~3e-4 rad


def normalise_weights(weights: Sequence[float], what: str = "weights") -> list[float]:
    """Weights -> p_i = w_i / sum(w). Raises ValueError naming `what` for negative, non-finite or
    all-zero weights (nothing to blend)."""
    values = [float(w) for w in weights]
    problem = weights_problem(values)
    if problem:
        raise ValueError(f"{what}: {problem}")
    total = sum(values)
    return [w / total for w in values]


def _check(tensors: Sequence[Tensor], weights: Sequence[float], method: str, what: str) -> list[float]:
    if method not in METHODS:
        raise ValueError(f"{what}: blend method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(tensors) != len(weights):
        raise ValueError(f"{what}: {len(tensors)} items but {len(weights)} weights")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"{what}: all items must have one shape to blend, got {sorted(shapes)}")
    return normalise_weights(weights, what)


def lerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    return (1.0 - t) * a.float() + t * b.float()


def slerp(a: Tensor, b: Tensor, t: float, dim: int = -1, eps: float = _EPS, arc_eps: float = _ARC_EPS) -> Tensor:
    """Spherical interpolation of the vectors along `dim` (see the module doc for the fallback)."""
    a, b = a.float(), b.float()
    norm_a, norm_b = a.norm(dim=dim, keepdim=True), b.norm(dim=dim, keepdim=True)
    cos = ((a * b).sum(dim=dim, keepdim=True) / (norm_a * norm_b).clamp_min(eps * eps)).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    arc_ok = (sin > arc_eps) & (norm_a > eps) & (norm_b > eps)
    safe_sin = torch.where(arc_ok, sin, torch.ones_like(sin))
    arc = (torch.sin((1.0 - t) * theta) * a + torch.sin(t * theta) * b) / safe_sin
    return torch.where(arc_ok, arc, lerp(a, b, t))


def blend(tensors: Sequence[Tensor], weights: Sequence[float], method: str = "linear", dim: int = -1,
          what: str = "weights") -> Tensor:
    """The weighted blend of same-shape tensors (float32), per vector along `dim` for slerp."""
    p = _check(tensors, weights, method, what)
    if method == "linear":
        return sum(w * x.float() for w, x in zip(p, tensors))
    acc, cumulative = tensors[0].float(), p[0]
    for w, x in zip(p[1:], tensors[1:]):
        cumulative += w
        acc = slerp(acc, x, w / cumulative if cumulative > 0 else 0.0, dim=dim)
    return acc


def blend_embeddings(embeds: Sequence[Tensor], weights: Sequence[float], method: str = "linear",
                     what: str = "prompt weights") -> Tensor:
    """Prompt embeddings (1, 77, D) or pooled (1, P): blended per token vector."""
    return blend(embeds, weights, method, dim=-1, what=what)


def blend_noise(noises: Sequence[Tensor], weights: Sequence[float], method: str = "slerp",
                what: str = "seed weights") -> Tensor:
    """Unit-variance Gaussian noise (B, ...) -> unit-variance noise, blended per sample (row)."""
    p = _check(noises, weights, method, what)
    shape = noises[0].shape
    flat = [n.float().reshape(shape[0], -1) for n in noises]
    if method == "linear":
        mixed = sum(w * x for w, x in zip(p, flat)) / math.sqrt(sum(w * w for w in p))
    else:
        mixed = blend(flat, p, "slerp", dim=1, what=what)
    return mixed.reshape(shape)


def seed_noise(seed: int, shape: Sequence[int]) -> Tensor:
    """The stream's noise for one seed: N(0, 1) float32 from a CPU generator seeded with `seed`."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def blend_seeds(seeds: Sequence[int], weights: Sequence[float], shape: Sequence[int], method: str = "slerp",
                what: str = "seed weights") -> Tensor:
    """The noise of a weighted seed list (one seed with any weight > 0 gives exactly `seed_noise`)."""
    if len(seeds) != len(weights):
        raise ValueError(f"{what}: {len(seeds)} seeds but {len(weights)} weights")
    return blend_noise([seed_noise(s, shape) for s in seeds], weights, method, what)


def transition(start: Tensor, target: Tensor, t: float, method: str = "linear", dim: int = -1) -> Tensor:
    """A prompt transition at t in [0, 1] (0 = start, 1 = target): the two-item blend."""
    t = min(1.0, max(0.0, float(t)))
    return blend([start, target], [1.0 - t, t], method, dim=dim, what="transition")
