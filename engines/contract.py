"""The module contract shared with the core: `StepModules(unet, encode, decode)`.

The engines build callables with exactly the signatures of the core's default modules:
- unet(sample (B,4,h,w), timestep (B,), encoder_hidden_states (B,77,D), **cond) -> eps (B,4,h,w),
  `cond` the named extra inputs declared by `unet_conditions(components)` (SDXL: text_embeds, time_ids)
- encode(images (B,3,H,W) in [-1,1]) -> latents, already scaled
- decode(latents) -> images in [-1,1]
- controlnet(net) -> call(sample, timestep, encoder_hidden_states, controlnet_cond, **added) ->
  (down_0, ..., down_{N-1}, mid): how this engine runs a loaded ControlNetModel
"""

from __future__ import annotations

from typing import Any

from dreamcam.core.modules import (  # noqa: F401  (re-exported)
    Condition,
    EagerControlNet,
    StepModules,
    eager_modules,
    example_conditions,
    unet_conditions,
)


def model_parts(components: Any) -> tuple[Any, Any]:
    """(unet, autoencoder) of the core's components: the modules the engines may retune."""
    unet = getattr(components, "unet", None)
    vae = getattr(components, "vae", None)
    if unet is None or vae is None:
        raise TypeError("components must carry .unet and .vae (dreamcam.core.loading.Components)")
    return unet, vae
