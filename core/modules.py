"""The engine contract: the three model calls of one stream step, as plain callables.

Engines (eager, compiled, TensorRT) provide a `StepModules` with exactly these signatures;
the stream makes every model call through them.
- `unet(sample (B,4,h,w), timestep (B,) int64, encoder_hidden_states (B,77,D), **cond) -> (B,4,h,w)`:
  the raw UNet prediction (epsilon, or v for v-prediction models: the stream converts v to
  epsilon itself, so engines never need to know). Inputs arrive in the model dtype.
  `cond` is the named extra conditioning the model needs, every tensor batch-first (B, ...):
  `unet_conditions(components)` declares the names and per-row shapes (SDXL: `text_embeds`
  (B,1280) and `time_ids` (B,6); ControlNet residuals and IP-Adapter image embeddings join this
  list the same way). Engines take them as ordinary call inputs (traced, exported, captured).
  ControlNet residuals are `control_down_0..N-1` (the UNet's skip order) and `control_mid`
  (computed by core/controlnet.py; their shapes depend on the latent size: `residual_shapes`).
  IP-Adapter image embeddings are `image_embeds` (B, 1, *embed): one adapter, one image per row
  (core/ip_adapter.py; declared by the stream's `conditions` while an adapter is attached);
  `EagerUNet` hands them to diffusers as its list of one tensor per adapter.
- `encode(images (B,3,H,W) in [-1,1]) -> latents (B,4,H/8,W/8)`, already multiplied by the
  VAE scaling factor; deterministic (the full VAE returns the mean, never a sample).
- `decode(latents (scaled as above)) -> images (B,3,H,W) in [-1,1]`.
- `controlnet(net) -> call`: the engine's way to run a loaded ControlNetModel (default: eager);
  `call(sample, timestep, encoder_hidden_states, controlnet_cond (B,3,H,W) in [0,1], **added)
  -> (down_0, ..., down_{N-1}, mid)` unscaled (conditioning scale 1; core/controlnet.py scales),
  `added` = SDXL's text_embeds and time_ids (CONTROLNET_COND_NAMES).
- `fits(height, width, unet_batch) -> str`: '' when the modules can serve frames of that size with
  that many UNet rows, else why not in words (a TensorRT engine's optimisation profile); the
  stream asks before a live change of size, steps or guidance takes effect and refuses the
  change with that reason (default `any_shape`: eager and compiled modules serve every shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from .loading import Components

Tensor = torch.Tensor
UNetCall = Callable[..., Tensor]  # unet(sample, timestep, encoder_hidden_states, **cond) -> Tensor

SDXL_TIME_IDS = 6  # (original h, w, crop top, left, target h, w)
# conditioning names that diffusers' UNet2DConditionModel takes inside `added_cond_kwargs`
ADDED_COND_NAMES = ("text_embeds", "time_ids", "image_embeds")
IMAGE_EMBEDS = "image_embeds"  # IP-Adapter image embeddings (B, 1, *embed)
# ControlNet residuals (core/controlnet.py): control_down_0..N-1 in the UNet's order, then control_mid
CONTROL_DOWN_PREFIX = "control_down_"
CONTROL_MID = "control_mid"
CONTROLNET_COND_NAMES = ("text_embeds", "time_ids")  # what a ControlNet takes in its added_cond_kwargs
ControlNetCall = Callable[..., tuple[Tensor, ...]]


def control_residual_names(down_count: int) -> tuple[str, ...]:
    return tuple(f"{CONTROL_DOWN_PREFIX}{i}" for i in range(down_count)) + (CONTROL_MID,)


@dataclass(frozen=True)
class Condition:
    """One named extra UNet input: a (B, *row_shape) tensor in the model dtype."""

    name: str
    row_shape: tuple[int, ...]


def unet_conditions(components: Components) -> tuple[Condition, ...]:
    """The extra inputs this model's UNet takes besides sample, timestep and text embeddings,
    in call order. The stream allocates them; engines probe, export and bind them by name."""
    if components.family != "sdxl":
        return ()
    config = components.unet.config
    pooled = int(config.projection_class_embeddings_input_dim) - SDXL_TIME_IDS * int(config.addition_time_embed_dim)
    return (Condition("text_embeds", (pooled,)), Condition("time_ids", (SDXL_TIME_IDS,)))


def example_conditions(conditions: tuple[Condition, ...], batch: int, *, dtype: torch.dtype,
                       device: torch.device | str) -> dict[str, Tensor]:
    """Random tensors of the declared shapes (probes and exports)."""
    return {c.name: torch.randn(batch, *c.row_shape, dtype=dtype, device=device) for c in conditions}


class EagerControlNet:
    """Calls a diffusers ControlNetModel at conditioning scale 1: (down_0, ..., down_{N-1}, mid)."""

    def __init__(self, net) -> None:
        self.model = net

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, controlnet_cond: Tensor,
                 **added: Tensor) -> tuple[Tensor, ...]:
        down, mid = self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                               controlnet_cond=controlnet_cond, conditioning_scale=1.0,
                               added_cond_kwargs=added or None, return_dict=False)
        return (*down, mid)


def any_shape(height: int, width: int, unet_batch: int) -> str:
    """`StepModules.fits` of modules that serve every shape: no reason to refuse one."""
    return ""


@dataclass
class StepModules:
    unet: UNetCall
    encode: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]
    controlnet: Callable[[Any], ControlNetCall] = EagerControlNet
    # the UNet in two halves (core/unet_halves.py: down(...) -> state, up(state, **residuals)), so
    # ControlNets run beside the down half; None: the engine has none (the whole `unet` is called)
    unet_halves: Any = None
    fits: Callable[[int, int, int], str] = any_shape  # (height, width, unet_batch) -> '' or why not


class EagerUNet:
    """Calls the diffusers UNet, routing each named conditioning input to its diffusers argument."""

    def __init__(self, unet) -> None:
        self.model = unet

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, **cond: Tensor) -> Tensor:
        inputs = route_unet_inputs(cond, "unet")
        kwargs: dict = {"added_cond_kwargs": inputs.added} if inputs.added else {}
        if inputs.down:
            kwargs["down_block_additional_residuals"] = inputs.down
            kwargs["mid_block_additional_residual"] = cond[CONTROL_MID]  # residuals come as a set: down without mid is a KeyError
        return self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                          return_dict=False, **kwargs)[0]


class UNetInputs(NamedTuple):
    """The UNet's named inputs as diffusers takes them."""

    added: dict[str, Any]  # added_cond_kwargs (text_embeds, time_ids, image_embeds as diffusers' list)
    down: tuple[Tensor, ...]  # the ControlNet down residuals, control_down_0 first
    mid: Tensor | None  # control_mid


def route_unet_inputs(named: dict[str, Tensor], where: str, kind: str = "conditioning input") -> UNetInputs:
    """Sort the UNet's named inputs into diffusers' arguments; TypeError naming `where` for a name
    that is none of them."""
    added: dict[str, Any] = {name: value for name, value in named.items() if name in ADDED_COND_NAMES}
    if IMAGE_EMBEDS in added:  # diffusers takes a list: one (B, images, *embed) tensor per IP-Adapter
        added[IMAGE_EMBEDS] = [added[IMAGE_EMBEDS]]
    down = sorted((name for name in named if name.startswith(CONTROL_DOWN_PREFIX)),
                  key=lambda name: int(name[len(CONTROL_DOWN_PREFIX):]))
    unknown = [name for name in named if name not in added and name not in down and name != CONTROL_MID]
    if unknown:
        raise TypeError(f"{where}: unknown {kind}(s) {unknown}; known: {', '.join(ADDED_COND_NAMES)}, "
                        f"{CONTROL_DOWN_PREFIX}<i>, {CONTROL_MID}")
    return UNetInputs(added, tuple(named[name] for name in down), named.get(CONTROL_MID))


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
    from .unet_halves import EagerUNetHalves

    tiny = components.vae_kind == "tiny"
    return StepModules(
        unet=EagerUNet(components.unet),
        encode=make_encode(components.vae, tiny),
        decode=make_decode(components.vae),
        unet_halves=EagerUNetHalves.of(components.unet),
    )
