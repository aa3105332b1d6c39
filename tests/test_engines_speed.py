"""Issue 11 engine directions on the CPU: fused GroupNorm+SiLU (torch path, Triton kernel through
Triton's interpreter), fp8 linears (emulated e4m3 numerics), module substitution on the engine's
own copy, bounded max-autotune options, and the compiled engine with the rewrites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines import EngineConfig, Geometry, create_engine
from dreamcam.engines.compiled import BOUNDED_AUTOTUNE, inductor_options, rewrite_unet
from dreamcam.engines.fp8 import E4M3_MAX, Fp8Linear, quantize, to_fp8
from dreamcam.engines.fused_norm import FusedResnetBlock, fuse_resnets, group_norm_silu, reference
from dreamcam.engines.rewrite import substitute


@pytest.fixture()
def components(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def _unet_inputs(unet, batch: int = 1, side: int = 8):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 4, side, side, generator=g)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return sample, torch.full((batch,), 500, dtype=torch.long), text


def _run_unet(unet, inputs):
    with torch.no_grad():
        return unet(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]


# --- fused GroupNorm + SiLU -------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
def test_op_torch_path_equals_group_norm_then_silu_and_keeps_the_layout(channels_last):
    x = torch.randn(2, 64, 6, 5) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b, shift = torch.randn(64), torch.randn(64), torch.randn(2, 64)
    want = F.silu(F.group_norm(x + shift[:, :, None, None], 32, w, b, 1e-5))
    got = group_norm_silu(x, w, b, 32, 1e-5, shift)
    torch.testing.assert_close(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_op_traces_into_one_graph():
    """The custom op has a fake implementation: torch.compile keeps it in its graph (no break)."""
    def f(x, w, b):
        return group_norm_silu(x * 2, w, b, 8, 1e-6) + 1

    x, w, b = torch.randn(1, 32, 4, 4), torch.randn(32), torch.randn(32)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w, b), f(x, w, b))


KERNEL_CHECK = textwrap.dedent("""
    import json, torch
    from dreamcam.engines import fused_norm as fn
    torch.manual_seed(0)
    cases = [((2, 64, 8, 8), 32, False, False, torch.float32), ((1, 96, 5, 7), 32, True, True, torch.float32),
             ((1, 320, 16, 16), 32, True, False, torch.float16), ((2, 64, 40, 40), 8, False, True, torch.float16)]
    out = []
    for shape, groups, cl, with_shift, dtype in cases:
        x = (torch.randn(*shape) * 3 + 1).to(dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(shape[1]).to(dtype), torch.randn(shape[1]).to(dtype)
        shift = torch.randn(shape[0], shape[1]).to(dtype) if with_shift else None
        assert fn.kernel_usable(x)
        y = fn.triton_group_norm_silu(x, w, b, groups, 1e-5, shift)
        want = fn.reference(x.float(), w.float(), b.float(), groups, 1e-5, None if shift is None else shift.float())
        split = fn._split(shape[1] // groups * shape[2] * shape[3], shape[0] * groups)[1]
        out.append(dict(err=(y.float() - want).abs().max().item(), dtype=str(dtype), split=split,
                        same_strides=y.stride() == x.stride()))
    print(json.dumps(out))
""")


def test_triton_kernel_matches_torch_in_the_interpreter():
    """The real Triton kernels, run by Triton's CPU interpreter (TRITON_INTERPRET=1): NCHW and
    channels_last, with and without the temb shift, fp32 and fp16, one and several chunks per group."""
    pytest.importorskip("triton", reason="Triton is not installed (CUDA builds of torch bring it)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cases = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(c["split"] > 1 for c in cases) and any(c["split"] == 1 for c in cases)
    for c in cases:
        assert c["same_strides"]
        assert c["err"] < (2e-2 if c["dtype"] == "torch.float16" else 1e-4), c


def test_fused_resnets_give_the_unet_output_on_a_copy(components):
    unet = components.unet
    inputs = _unet_inputs(unet)
    want = _run_unet(unet, inputs)
    fused, count = fuse_resnets(unet)
    blocks = sum(len(b.resnets) for b in [*unet.down_blocks, *unet.up_blocks]) + len(unet.mid_block.resnets)
    assert count == blocks > 0
    assert fused is not unet
    assert not any(isinstance(m, FusedResnetBlock) for m in unet.modules())  # the components' UNet unchanged
    assert {id(p) for p in fused.parameters()} == {id(p) for p in unet.parameters()}  # weights shared
    torch.testing.assert_close(_run_unet(fused, inputs), want, rtol=1e-4, atol=1e-5)


def test_substitute_copies_only_the_path_to_what_it_replaces():
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), torch.nn.Conv2d(1, 1, 1))
    copy, n = substitute(model, lambda m: isinstance(m, torch.nn.ReLU), lambda m: torch.nn.GELU())
    assert n == 1 and isinstance(copy[0][1], torch.nn.GELU) and isinstance(model[0][1], torch.nn.ReLU)
    assert copy[0][0] is model[0][0] and copy[1] is model[1]
    same, n = substitute(model, lambda m: False, lambda m: m)
    assert same is model and n == 0


# --- fp8 linears --------------------------------------------------------------------------------------

def test_quantize_uses_the_e4m3_range():
    t = torch.randn(64, 64) * 5
    q, scale = quantize(t)
    assert q.dtype == torch.float8_e4m3fn
    assert float(q.float().abs().max()) == pytest.approx(E4M3_MAX, rel=1e-3)
    rel = ((q.float() * scale - t).abs() / t.abs().clamp(min=1e-3)).median()
    assert rel < 0.04  # 3 mantissa bits: a relative step of 1/16 at most


def test_fp8_linear_emulated_is_close_and_odd_rows_are_exact():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 96)
    fp8 = Fp8Linear(lin, emulate=True)
    x = torch.randn(2, 32, 128)  # 64 rows: the fp8 path
    want, got = lin(x), fp8(x)
    assert got.shape == want.shape
    rel = (got - want).norm() / want.norm()
    assert 0 < rel < 0.05
    odd = torch.randn(3, 128)  # 3 rows: the layer's own weight
    torch.testing.assert_close(fp8(odd), lin(odd))


def test_fp8_linear_takes_a_transposed_view_through_scaled_mm():
    """The UNet's proj_in gets NCHW features permuted to tokens: a column-major view. torch's own
    shape and stride rules for `_scaled_mm` (its meta kernel, what torch.compile traces) refuse a
    left operand that is not row-major; the layer must hand it one (failed on the H200, run 9)."""
    lin = torch.nn.Linear(320, 640, device="meta")
    fp8 = Fp8Linear(lin, emulate=False)
    tokens = torch.empty(1, 320, 64, 64, device="meta").permute(0, 2, 3, 1).reshape(1, 4096, 320)
    assert tokens.reshape(-1, 320).stride() == (1, 4096)
    assert fp8(tokens).shape == (1, 4096, 640)


def test_fp8_unet_copy_is_close_and_leaves_the_components_alone(components):
    unet = components.unet
    inputs = _unet_inputs(unet)
    want = _run_unet(unet, inputs)
    fp8, count = to_fp8(unet, emulate=True)
    assert count > 0
    assert not any(isinstance(m, Fp8Linear) for m in unet.modules())
    got = _run_unet(fp8, inputs)
    rel = float((got - want).norm() / want.norm())
    assert 0 < rel < 0.1, rel


# --- options and the compiled engine ---------------------------------------------------------------------

def test_bounded_autotune_options():
    bounded = inductor_options(EngineConfig(compile_mode="max-autotune-no-cudagraphs"))
    assert bounded["max_autotune"] and bounded["max_autotune_gemm_backends"] == "TRITON,ATEN"
    assert bounded["max_autotune_conv_backends"] == "ATEN" and "coordinate_descent_tuning" not in bounded
    assert set(bounded) <= set(BOUNDED_AUTOTUNE)
    assert inductor_options(EngineConfig(compile_mode="max-autotune-no-cudagraphs", autotune_search="full")) is None
    assert inductor_options(EngineConfig()) is None
    both = inductor_options(EngineConfig(coordinate_descent=True, channels_last_io=True))
    assert both == {"coordinate_descent_tuning": True, "force_layout_optimization": True}
    with pytest.raises(ValueError, match="autotune_search"):
        EngineConfig(autotune_search="huge")


def test_rewrite_unet_counts_and_keeps_the_plain_unet_by_default(components):
    unet = components.unet
    same, counts = rewrite_unet(unet, EngineConfig())
    assert same is unet and counts == {}
    both, counts = rewrite_unet(unet, EngineConfig(fuse_norm_silu=True, fp8_linear=True))
    assert counts["fused_resnets"] > 0 and counts["fp8_linears"] > 0
    assert any(isinstance(m, Fp8Linear) for m in both.modules())
    assert any(isinstance(m, FusedResnetBlock) for m in both.modules())


def test_compiled_engine_with_the_rewrites_gives_the_core_frames(tiny_model_dir, tmp_path):
    """Inductor (C++ on the CPU) around the custom op and the fp8 layers (emulated here), with
    channels_last inputs: what the GPU run compiles, at tiny shapes."""
    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    cfg = StreamConfig(width=32, height=32, t_index_list=(25,), cfg_type="none", seed=3, prompt="a cat")
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    want = np.stack([StreamDiffusion(load_components(spec), cfg)(f) for f in frames])
    comps = load_components(spec)
    config = EngineConfig(geometry=Geometry(32, 32), cache_dir=tmp_path, fuse_norm_silu=True, fp8_linear=True,
                          channels_last_io=True)
    engine = create_engine("compiled", comps, config)
    assert engine.name == "compiled", engine.describe()
    stream = StreamDiffusion(comps, cfg, modules=engine.modules)
    got = np.stack([stream(f) for f in frames])
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 3 and diff.max() <= 40  # fp8 linears: close, not equal
