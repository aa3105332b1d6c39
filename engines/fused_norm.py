"""GroupNorm + SiLU in one Triton pass pair (issue 11), with the time-embedding add folded in.

`group_norm_silu(x, weight, bias, groups, eps, shift=None)` = `silu(group_norm(x + shift[:, :, None,
None]))`. On CUDA with Triton it runs two kernels: partial sums of x and x^2 over chunks of each
(sample, group) (many programs even at batch 1, where there are only 32 groups), then normalise,
scale, shift and SiLU in the same chunks. Everything else (the CPU, no Triton, a layout that is
neither contiguous nor channels_last) takes the torch path, which is also the numerical reference.
Registered as the custom op `dreamcam::group_norm_silu` so torch.compile keeps it in its graph.

`FusedResnetBlock` runs diffusers' `ResnetBlock2D` (the "default" time-embedding form, no in-block
resampling, SiLU) with this op; `fuse_resnets(unet)` returns the UNet with such blocks wrapped
(see engines/rewrite.py: the engine's own copy, the weights shared).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; the CPU build and some platforms lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 1024
TARGET_PROGRAMS = 1024  # enough programs to fill a big GPU at batch 1
MAX_SPLIT = 64


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
              shift: torch.Tensor | None = None) -> torch.Tensor:
    """The torch path (and the numerical reference of the kernel)."""
    if shift is not None:
        x = x + shift[:, :, None, None]
    return F.silu(F.group_norm(x, groups, weight, bias, eps))


if triton is not None:

    @triton.jit
    def _offsets(e, HW, CPG, s_c, s_p, CL: tl.constexpr):
        # element e of a group: channels_last walks channels fastest, NCHW walks pixels fastest
        if CL:
            c = e % CPG
            p = e // CPG
        else:
            c = e // HW
            p = e % HW
        return c, c * s_c + p * s_p

    @triton.jit
    def _stats_kernel(x_ptr, shift_ptr, part_ptr, HW, CPG, G, s_n, s_c, s_p, chunk, SPLIT,
                      HAS_SHIFT: tl.constexpr, CL: tl.constexpr, BLOCK: tl.constexpr):
        ng = tl.program_id(0)
        sp = tl.program_id(1)
        n = ng // G
        g = ng % G
        total = CPG * HW
        base = x_ptr + n * s_n + g * CPG * s_c
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        start = sp * chunk
        for off in range(start, start + chunk, BLOCK):
            e = off + tl.arange(0, BLOCK)
            mask = e < total
            c, o = _offsets(e, HW, CPG, s_c, s_p, CL)
            v = tl.load(base + o, mask=mask, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                v += tl.load(shift_ptr + n * G * CPG + g * CPG + c, mask=mask, other=0.0).to(tl.float32)
                v = tl.where(mask, v, 0.0)
            acc += v
            acc2 += v * v
        slot = part_ptr + (ng * SPLIT + sp) * 2
        tl.store(slot, tl.sum(acc, axis=0))
        tl.store(slot + 1, tl.sum(acc2, axis=0))

    @triton.jit
    def _apply_kernel(x_ptr, y_ptr, w_ptr, b_ptr, shift_ptr, part_ptr, HW, CPG, G, s_n, s_c, s_p, chunk, SPLIT,
                      inv_count, eps, HAS_SHIFT: tl.constexpr, CL: tl.constexpr, SPLIT_P2: tl.constexpr,
                      BLOCK: tl.constexpr):
        ng = tl.program_id(0)
        sp = tl.program_id(1)
        n = ng // G
        g = ng % G
        idx = tl.arange(0, SPLIT_P2)
        parts = part_ptr + (ng * SPLIT + idx) * 2
        s1 = tl.sum(tl.load(parts, mask=idx < SPLIT, other=0.0), axis=0)
        s2 = tl.sum(tl.load(parts + 1, mask=idx < SPLIT, other=0.0), axis=0)
        mean = s1 * inv_count
        var = tl.maximum(s2 * inv_count - mean * mean, 0.0)
        rstd = 1.0 / tl.sqrt(var + eps)
        total = CPG * HW
        offset = n * s_n + g * CPG * s_c
        start = sp * chunk
        for off in range(start, start + chunk, BLOCK):
            e = off + tl.arange(0, BLOCK)
            mask = e < total
            c, o = _offsets(e, HW, CPG, s_c, s_p, CL)
            v = tl.load(x_ptr + offset + o, mask=mask, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                v += tl.load(shift_ptr + n * G * CPG + g * CPG + c, mask=mask, other=0.0).to(tl.float32)
            ch = g * CPG + c
            w = tl.load(w_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            h = (v - mean) * rstd * w + b
            h = h * tl.sigmoid(h)
            tl.store(y_ptr + offset + o, h.to(y_ptr.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> bool | None:
    """True: channels_last, False: contiguous NCHW, None: neither (torch path)."""
    if x.dim() != 4:
        return None
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    return None


def kernel_usable(x: torch.Tensor) -> bool:
    interpreted = x.device.type == "cpu" and _interpreting()
    return triton is not None and (x.is_cuda or interpreted) and _layout(x) is not None


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _split(total: int, programs: int) -> tuple[int, int]:
    """(chunk, split): each of `split` programs per group sums `chunk` elements (a multiple of BLOCK)."""
    blocks = triton.cdiv(total, BLOCK)
    split = max(1, min(MAX_SPLIT, blocks, triton.cdiv(TARGET_PROGRAMS, programs)))
    chunk = triton.cdiv(blocks, split) * BLOCK
    return chunk, triton.cdiv(total, chunk)


def triton_group_norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
                           shift: torch.Tensor | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    channels_last = _layout(x)
    cpg = c // groups
    hw = h * w
    # pixel stride: both layouts flatten (h, w) to one index
    s_n, s_c, s_p = x.stride(0), x.stride(1), x.stride(3)
    chunk, split = _split(cpg * hw, n * groups)
    part = torch.empty(n * groups * split * 2, device=x.device, dtype=torch.float32)
    y = torch.empty_like(x)
    shift_arg = shift.contiguous() if shift is not None else x  # unused pointer when HAS_SHIFT is off
    grid = (n * groups, split)
    _stats_kernel[grid](x, shift_arg, part, hw, cpg, groups, s_n, s_c, s_p, chunk, split,
                        HAS_SHIFT=shift is not None, CL=channels_last, BLOCK=BLOCK)
    _apply_kernel[grid](x, y, weight, bias, shift_arg, part, hw, cpg, groups, s_n, s_c, s_p, chunk, split,
                        1.0 / (cpg * hw), eps, HAS_SHIFT=shift is not None, CL=channels_last,
                        SPLIT_P2=max(16, triton.next_power_of_2(split)), BLOCK=BLOCK)
    return y


@torch.library.custom_op("dreamcam::group_norm_silu", mutates_args=())
def _group_norm_silu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
                        shift: torch.Tensor | None = None) -> torch.Tensor:
    if kernel_usable(x):
        return triton_group_norm_silu(x, weight, bias, groups, eps, shift)
    # the fake's strides exactly (Inductor checks the strides of an extern kernel's output)
    return torch.empty_like(x).copy_(reference(x, weight, bias, groups, eps, shift))


@_group_norm_silu_op.register_fake
def _(x, weight, bias, groups, eps, shift=None):
    return torch.empty_like(x)


def group_norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    return _group_norm_silu_op(x, weight, bias, groups, eps, shift)


class FusedResnetBlock(torch.nn.Module):
    """diffusers' ResnetBlock2D forward with both GroupNorm + SiLU pairs fused (the temb add too).

    Holds the original block and reads its submodules at call time, so a LoRA layer that peft puts
    on `conv1`/`conv2` later is used; the state dict keys gain a `block.` prefix (nothing loads
    into this copy)."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        b = self.block
        n1, n2 = b.norm1, b.norm2
        h = group_norm_silu(input_tensor, n1.weight, n1.bias, n1.num_groups, n1.eps)
        h = b.conv1(h)
        shift = None
        if b.time_emb_proj is not None and temb is not None:
            shift = b.time_emb_proj(temb if b.skip_time_act else F.silu(temb))
        h = group_norm_silu(h, n2.weight, n2.bias, n2.num_groups, n2.eps, shift)
        h = b.conv2(b.dropout(h))
        skip = b.conv_shortcut(input_tensor) if b.conv_shortcut is not None else input_tensor
        return (skip + h) / b.output_scale_factor


def fusable(module: torch.nn.Module) -> bool:
    """A ResnetBlock2D whose forward FusedResnetBlock reproduces exactly."""
    from diffusers.models.resnet import ResnetBlock2D

    return (isinstance(module, ResnetBlock2D) and module.upsample is None and module.downsample is None
            and module.time_embedding_norm == "default" and isinstance(module.nonlinearity, torch.nn.SiLU)
            and all(isinstance(n, torch.nn.GroupNorm) and n.affine for n in (module.norm1, module.norm2)))


def fuse_resnets(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """(a copy of `model` with every fusable ResnetBlock2D wrapped, how many were wrapped)."""
    from .rewrite import substitute

    return substitute(model, fusable, FusedResnetBlock)
