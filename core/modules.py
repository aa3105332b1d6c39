"""The engine contract: the three model calls of one stream step, as plain callables.

Engines (eager, compiled, TensorRT) provide a `StepModules` with exactly these signatures;
the stream makes every model call through them.
- `unet(sample (B,4,h,w), timestep (B,) int64, encoder_hidden_states (B,77,D)) -> (B,4,h,w)`:
  the raw UNet prediction (epsilon, or v for v-prediction models: the stream converts v to
  epsilon itself, so engines never need to know). Inputs arrive in the model dtype.
- `encode(images (B,3,H,W) in [-1,1]) -> latents (B,4,H/8,W/8)`, already multiplied by the
  VAE scaling factor; deterministic (the full VAE returns the mean, never a sample).
- `decode(latents (scaled as above)) -> images (B,3,H,W) in [-1,1]`.
For SDXL the eager UNet carries the pooled text embeddings and time ids as persistent tensors
(`sdxl_text_embeds`, `sdxl_time_ids` attributes of the callable) that the stream fills.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .loading import Components

Tensor = torch.Tensor


@dataclass
class StepModules:
    unet: Callable[[Tensor, Tensor, Tensor], Tensor]
    encode: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]


class EagerUNet:
    """Calls the diffusers UNet; for SDXL adds the persistent added-conditioning tensors."""

    def __init__(self, unet) -> None:
        self.model = unet
        self.sdxl_text_embeds: Tensor | None = None  # (B, 1280), filled by the stream
        self.sdxl_time_ids: Tensor | None = None  # (B, 6)

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        kwargs = {}
        if self.sdxl_text_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.sdxl_text_embeds, "time_ids": self.sdxl_time_ids}
        return self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                          return_dict=False, **kwargs)[0]


def _weights_dtype(module) -> torch.dtype | None:
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return None if param is None else param.dtype


def make_encode(vae, tiny: bool) -> Callable[[Tensor], Tensor]:
    """Inputs are cast to the VAE's own precision (float32 for an upcast SDXL VAE, see
    loading.vae_compute_dtype) and the latents back to the caller's dtype."""
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    compute = _weights_dtype(vae)

    def encode(images: Tensor) -> Tensor:
        out = vae.encode(images if compute is None else images.to(compute))
        latents = out.latents if tiny else out.latent_dist.mean
        return ((latents - shift) * scale).to(images.dtype)

    return encode


def make_decode(vae) -> Callable[[Tensor], Tensor]:
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    compute = _weights_dtype(vae)

    def decode(latents: Tensor) -> Tensor:
        inputs = latents if compute is None else latents.to(compute)
        return vae.decode(inputs / scale + shift, return_dict=False)[0].to(latents.dtype)

    return decode


def eager_modules(components: Components) -> StepModules:
    """Plain PyTorch modules (the always-working fallback engine)."""
    tiny = components.vae_kind == "tiny"
    return StepModules(
        unet=EagerUNet(components.unet),
        encode=make_encode(components.vae, tiny),
        decode=make_decode(components.vae),
    )
