"""ONNX export of the step modules (and ControlNets) with dynamic batch, height and width.

TorchScript exporter (dynamo=False), opset 18. The UNet is traced at a latent size that is NOT
a multiple of its total down-sampling factor (we trace at an odd size): diffusers then takes its `upsample_size` path, in
which each up-sampling follows the size of its skip connection; traced at a multiple of 8 the
graph would bake in "x2" and break at sizes such as 768x432 (latent 96x54).

ControlNets: `controlnet_spec` exports a net on its own (inputs as the UNet's plus `controlnet_cond`,
the control image at pixel size; outputs control_down_0..N-1 and control_mid), and
`unet_spec(conditions, residuals)` gives the UNet those residuals as named inputs, each with a
dynamic batch and spatial size (shapes: core.controlnet.residual_shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dreamcam.core.controlnet import residual_shapes

from .contract import Condition, example_conditions

OPSET = 18


class _Wrap(torch.nn.Module):
    """Lets the exporter trace any callable (the core's modules may be closures); the trailing
    `named` inputs are passed to it by keyword (the UNet's named conditioning)."""

    def __init__(self, fn: Callable[..., torch.Tensor], owner: torch.nn.Module | None, named: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.fn = fn
        self.owner = owner  # registers the weights so they are exported as initializers
        self.named = named

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        positional = len(args) - len(self.named)
        out = self.fn(*args[:positional], **dict(zip(self.named, args[positional:])))
        return tuple(out) if isinstance(out, (list, tuple)) else out


@dataclass(frozen=True)
class ExportSpec:
    """Names and dynamic axes of one exported module; `named` are the inputs (last in `inputs`)
    that the module takes by keyword."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict
    named: tuple[str, ...] = ()


def _residual_axes(names: tuple[str, ...]) -> dict:
    """Each residual's batch and its own spatial axes (every level has its own size)."""
    return {name: {0: "B", 2: f"{name}_h", 3: f"{name}_w"} for name in names}


def unet_spec(conditions: tuple[Condition, ...] = (), residuals: tuple[str, ...] = ()) -> ExportSpec:
    """The UNet's inputs: sample, timestep, text embeddings, then each named conditioning input
    (dynamic batch; its other axes fixed), then the ControlNet residuals `residuals` (names of
    `residual_shapes`; dynamic batch and size)."""
    names = tuple(c.name for c in conditions)
    return ExportSpec(
        inputs=("sample", "timestep", "encoder_hidden_states", *names, *residuals),
        outputs=("eps",),
        dynamic_axes={"sample": {0: "B", 2: "h", 3: "w"}, "timestep": {0: "B"},
                      "encoder_hidden_states": {0: "B"}, "eps": {0: "B", 2: "h", 3: "w"},
                      **{name: {0: "B"} for name in names}, **_residual_axes(residuals)},
        named=names + tuple(residuals),
    )


def controlnet_spec(conditions: tuple[Condition, ...], residuals: tuple[str, ...]) -> ExportSpec:
    """A ControlNet: the UNet's inputs plus `controlnet_cond` (B, 3, H, W) -> the residuals."""
    names = tuple(c.name for c in conditions)
    return ExportSpec(
        inputs=("sample", "timestep", "encoder_hidden_states", "controlnet_cond", *names),
        outputs=tuple(residuals),
        dynamic_axes={"sample": {0: "B", 2: "h", 3: "w"}, "timestep": {0: "B"}, "encoder_hidden_states": {0: "B"},
                      "controlnet_cond": {0: "B", 2: "H", 3: "W"}, **{name: {0: "B"} for name in names},
                      **_residual_axes(residuals)},
        named=names,
    )


UNET = unet_spec()
ENCODER = ExportSpec(
    inputs=("images",), outputs=("latents",),
    dynamic_axes={"images": {0: "B", 2: "H", 3: "W"}, "latents": {0: "B", 2: "h", 3: "w"}},
)
DECODER = ExportSpec(
    inputs=("latents",), outputs=("images",),
    dynamic_axes={"latents": {0: "B", 2: "h", 3: "w"}, "images": {0: "B", 2: "H", 3: "W"}},
)


def odd_latent_side(side: int) -> int:
    """An odd latent side near `side`: a multiple of no down-sampling factor (see module doc)."""
    return side if side % 2 else side + 1


def unet_example(batch: int, latent_hw: tuple[int, int], text_len: int, text_dim: int, *,
                 dtype: torch.dtype, device: torch.device, channels: int = 4,
                 conditions: tuple[Condition, ...] = (), residuals_of: object = None) -> tuple[torch.Tensor, ...]:
    """Example inputs in `unet_spec(conditions, residuals).inputs` order; `residuals_of` (a UNet
    or ControlNet config) adds small random residuals of `residual_shapes` at the traced size."""
    h, w = (odd_latent_side(s) for s in latent_hw)
    residuals = residual_shapes(residuals_of, h, w) if residuals_of is not None else {}
    return (
        torch.randn(batch, channels, h, w, dtype=dtype, device=device),
        torch.full((batch,), 500.0, dtype=torch.float32, device=device),
        torch.randn(batch, text_len, text_dim, dtype=dtype, device=device),
        *example_conditions(conditions, batch, dtype=dtype, device=device).values(),
        *(0.1 * torch.randn(batch, *shape, dtype=dtype, device=device) for shape in residuals.values()),
    )


def controlnet_example(batch: int, latent_hw: tuple[int, int], text_len: int, text_dim: int, *,
                       dtype: torch.dtype, device: torch.device, vae_factor: int = 8, channels: int = 4,
                       conditions: tuple[Condition, ...] = ()) -> tuple[torch.Tensor, ...]:
    """Example inputs in `controlnet_spec(...).inputs` order (odd latent sides, as the UNet's)."""
    sample, t, text, *cond = unet_example(batch, latent_hw, text_len, text_dim, dtype=dtype, device=device,
                                          channels=channels, conditions=conditions)
    h, w = sample.shape[-2:]
    image = torch.rand(batch, 3, h * vae_factor, w * vae_factor, dtype=dtype, device=device)
    return (sample, t, text, image, *cond)


def export(fn: Callable[..., torch.Tensor], owner: torch.nn.Module | None, example: tuple[torch.Tensor, ...],
           spec: ExportSpec, path: Path) -> Path:
    """Export `fn(*example)` to `path` (weights beside it as external data if the model is large)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _Wrap(fn, owner, spec.named).eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_axes=spec.dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path
