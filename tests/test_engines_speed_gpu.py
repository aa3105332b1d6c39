"""Issue 11 kernels on a CUDA GPU: the Triton GroupNorm+SiLU against torch at the SD UNet's shapes
(also replayed in a CUDA graph), and the fp8 linear through torch._scaled_mm on sm >= 8.9."""

from __future__ import annotations

import pytest
import torch

from dreamcam.engines.fp8 import Fp8Linear, fp8_capable
from dreamcam.engines.fused_norm import group_norm_silu, kernel_usable, reference

from gpu_helpers import GPU_ONLY

pytestmark = GPU_ONLY

SD_SHAPES = [(1, 320, 64, 64), (2, 640, 32, 32), (1, 1280, 8, 8), (1, 960, 16, 16)]


@pytest.mark.parametrize("shape", SD_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_group_norm_silu_matches_torch(shape, channels_last):
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda", dtype=torch.float16) * 2 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1], device="cuda", dtype=torch.float16)
    b = torch.randn(shape[1], device="cuda", dtype=torch.float16)
    shift = torch.randn(shape[0], shape[1], device="cuda", dtype=torch.float16)
    assert kernel_usable(x)
    for s in (None, shift):
        got = group_norm_silu(x, w, b, 32, 1e-5, s)
        want = reference(x.float(), w.float(), b.float(), 32, 1e-5, None if s is None else s.float())
        assert got.stride() == x.stride()
        assert (got.float() - want).abs().max().item() < 2e-2


def test_triton_group_norm_silu_replays_in_a_cuda_graph():
    x = torch.randn(1, 320, 64, 64, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w = torch.ones(320, device="cuda", dtype=torch.float16)
    b = torch.zeros(320, device="cuda", dtype=torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        group_norm_silu(x, w, b, 32, 1e-5)  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = group_norm_silu(x, w, b, 32, 1e-5)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert (out.float() - reference(x.float(), w.float(), b.float(), 32, 1e-5)).abs().max().item() < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available() or not fp8_capable(torch.device("cuda")),
                    reason="fp8 tensor cores need compute capability 8.9 or newer")
def test_fp8_linear_on_tensor_cores_is_close_to_fp16():
    torch.manual_seed(0)
    lin = torch.nn.Linear(1280, 5120, device="cuda", dtype=torch.float16)
    fp8 = Fp8Linear(lin)
    assert not fp8.emulate
    x = torch.randn(1, 4096, 1280, device="cuda", dtype=torch.float16)
    want, got = lin(x), fp8(x)
    assert got.dtype == torch.float16 and got.shape == want.shape
    rel = ((got.float() - want.float()).norm() / want.float().norm()).item()
    assert rel < 0.05, rel
    emulated = Fp8Linear(lin, emulate=True)(x)
    assert ((got.float() - emulated.float()).norm() / want.float().norm()).item() < 0.01
