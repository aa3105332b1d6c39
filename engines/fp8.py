"""fp8 (e4m3) matmuls for the UNet's linear layers on Hopper and newer (issue 11, opt-in).

`Fp8Linear(linear)` keeps the weight as float8_e4m3fn with one per-tensor scale (amax / 448, fixed
at creation) and scales each input by its own amax at call time (computed on the GPU, so it is
captured in the CUDA graph like everything else). On a GPU with compute capability >= 8.9 the
product is `torch._scaled_mm` (fp8 tensor cores, fp32 accumulation, fp16/bf16 out); elsewhere the
same quantised numbers are multiplied in the input dtype (`emulate`), which is how the CPU tests
check the numerics. Row counts that are not a multiple of 16 (the time embedding at batch 1, the
77 text tokens of cross-attention keys and values) use the layer's own fp16 weight: `_scaled_mm`
wants multiples of 16.

`to_fp8(unet)` returns the engine's own copy with every eligible nn.Linear replaced (weights of
the copy only; the components' UNet keeps fp16 for the other engines). A LoRA loaded into the
components later is not seen by these layers: fp8 is for measuring, not yet for live LoRAs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
MIN_FEATURES = 64  # tiny projections gain nothing and lose precision


def fp8_capable(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t / scale as e4m3, scale as a float32 0-d tensor), scale = amax / 448."""
    scale = (t.detach().abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, *, emulate: bool | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = weight.dtype
        qweight, scale = quantize(weight)
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.emulate = not fp8_capable(weight.device) if emulate is None else emulate
        self.plain = linear  # shared, not copied: the exact path for odd row counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] % 16:
            out = self.plain(x2)
        elif self.emulate:
            out = self._emulated(x2)
        else:
            qx, x_scale = quantize(x2)
            # _scaled_mm takes a row-major left operand only; the UNet hands some projections a
            # transposed view (its NCHW features permuted to tokens): H200 run 9 failed to compile there
            out = torch._scaled_mm(qx.contiguous(), self.qweight.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                   bias=self.bias, out_dtype=self.out_dtype)
        return out.reshape(*lead, self.out_features)

    def _emulated(self, x2: torch.Tensor) -> torch.Tensor:
        """The same quantised operands multiplied in the input precision (CPU reference, odd row counts)."""
        qx, x_scale = quantize(x2)
        a = qx.to(x2.dtype) * x_scale.to(x2.dtype)
        w = self.qweight.to(x2.dtype) * self.weight_scale.to(x2.dtype)
        return F.linear(a, w, None if self.bias is None else self.bias.to(x2.dtype)).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3"


def eligible(module: torch.nn.Module) -> bool:
    """A plain nn.Linear whose sizes fp8 tensor cores take (multiples of 16) and worth it."""
    return (type(module) is torch.nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0
            and min(module.in_features, module.out_features) >= MIN_FEATURES)


def to_fp8(model: torch.nn.Module, *, emulate: bool | None = None) -> tuple[torch.nn.Module, int]:
    """(a copy of `model` with eligible linears in fp8, how many were replaced)."""
    from .rewrite import substitute

    return substitute(model, eligible, lambda m: Fp8Linear(m, emulate=emulate))
