"""The UNet in two halves, so that ControlNets can run beside the first one.

A ControlNet's residuals are only read after the UNet's down blocks and mid block: the down
residuals join the skip connections that the up blocks read, the mid residual is added to the mid
block's output. So the step can start the UNet's down half and the ControlNets at the same time
(on side CUDA streams, core/side_streams.py) and wait for the residuals only before the up half:
at one frame at a time neither fills the GPU alone. `EagerUNetHalves.down` runs diffusers'
`UNet2DConditionModel` forward up to and including the mid block, `up` the rest with the residuals;
`up(down(x), residuals)` computes what `unet(x, down_block_additional_residuals=...,
mid_block_additional_residual=...)` does, op for op (tests/test_core_unet_halves.py: bit-equal on
the CPU). Skips added before or after the mid block give the same numbers: the mid block reads the
last down output, not the skip list.

UNets with features this split does not cover (class embeddings, a timestep condition, image-hint
additions) get no halves (`of` returns None): the stream then calls the whole UNet as before.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .modules import route_unet_inputs

Tensor = torch.Tensor


class DownState(NamedTuple):
    """What the up half needs from the down half."""

    hidden: Tensor  # the mid block's output
    emb: Tensor  # the time (+ SDXL text/time) embedding
    context: Any  # the cross-attention input: the text tokens, or (text, [image tokens]) with an IP-Adapter
    skips: tuple[Tensor, ...]  # the skip connections, in down order


def _cross(block: torch.nn.Module) -> bool:
    return bool(getattr(block, "has_cross_attention", False))


class EagerUNetHalves:
    """`down(sample, timestep, encoder_hidden_states, **cond) -> DownState` and
    `up(state, control_down_0=..., ..., control_mid=...) -> noise prediction`."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet

    @staticmethod
    def of(unet: torch.nn.Module) -> "EagerUNetHalves | None":
        """Halves of a diffusers UNet2DConditionModel, or None where the split does not apply."""
        config = getattr(unet, "config", None)
        needed = ("down_blocks", "up_blocks", "get_time_embed", "get_aug_embed", "process_encoder_hidden_states")
        if config is None or not all(hasattr(unet, name) for name in needed):
            return None
        if (getattr(unet, "class_embedding", None) is not None or config.get("time_cond_proj_dim") is not None
                or config.get("addition_embed_type") == "image_hint" or getattr(unet, "position_net", None) is not None):
            return None
        return EagerUNetHalves(unet)

    def down(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, **cond: Tensor) -> DownState:
        u = self.unet
        inputs = route_unet_inputs(cond, "unet down half")
        if inputs.down or inputs.mid is not None:
            raise TypeError("unet down half: the ControlNet residuals go to the up half")
        added = inputs.added
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
        aug = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)
        emb = emb + aug if aug is not None else emb
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        context = u.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                  added_cond_kwargs=added)
        hidden = u.conv_in(sample)
        skips: tuple[Tensor, ...] = (hidden,)
        for block in u.down_blocks:
            if _cross(block):
                hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=context)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        if u.mid_block is not None:
            hidden = u.mid_block(hidden, emb, encoder_hidden_states=context) if _cross(u.mid_block) \
                else u.mid_block(hidden, emb)
        return DownState(hidden, emb, context, skips)

    def up(self, state: DownState, **residuals: Tensor) -> Tensor:
        u = self.unet
        inputs = route_unet_inputs(residuals, "unet up half", "input")
        if inputs.added:
            raise TypeError(f"unet up half: unknown input(s) {sorted(inputs.added)}; the conditioning goes to the down half")
        hidden, emb, context, skips = state
        if inputs.down:
            skips = tuple(s + r for s, r in zip(skips, inputs.down))
        if inputs.mid is not None:
            hidden = hidden + inputs.mid
        factor = 2 ** u.num_upsamplers
        forward_size = any(dim % factor != 0 for dim in skips[0].shape[-2:])  # the input's size (conv_in keeps it)
        size = None
        for i, block in enumerate(u.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            if i < len(u.up_blocks) - 1 and forward_size:
                size = skips[-1].shape[2:]
            if _cross(block):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=context, upsample_size=size)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
        if u.conv_norm_out:
            hidden = u.conv_act(u.conv_norm_out(hidden))
        return u.conv_out(hidden)
