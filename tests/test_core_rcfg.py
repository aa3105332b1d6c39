"""Proof: residual CFG (`self`, `initialize`) follows the formulas of the reference notes.

The reference below is a literal, per-slot transcription of the notes (section 1.3), one UNet
call per slot, with our warm-up (slot k primed with the first latent noised to t_k; its residual
is then exactly that slot's noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from test_core_parity import SEED, SIZE, diffusers_embeds, frames, recording


@pytest.fixture(scope="module")
def comp(tiny_sd15_dir):
    return load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd")))


def coefficients(comp, idx):
    sched = comp.scheduler.__class__.from_config(comp.scheduler.config)
    sched.set_timesteps(50)
    ts = [int(sched.timesteps[i]) for i in idx]
    acp = sched.alphas_cumprod
    a = [acp[t].sqrt().item() for t in ts]
    b = [(1 - acp[t]).sqrt().item() for t in ts]
    skip_out = [sched.get_scalings_for_boundary_condition_discrete(t) for t in ts]
    return ts, a, b, [float(s) for s, _ in skip_out], [float(o) for _, o in skip_out]


@torch.no_grad()
def rcfg_reference(comp, clip, idx, mode, g, delta, cond, uncond):
    n = len(idx)
    ts, a, b, c_skip, c_out = coefficients(comp, idx)
    noise = torch.randn((n, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(SEED))
    noise = [noise[k: k + 1] for k in range(n)]

    def encode(f):
        return comp.vae.encode(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 127.5 - 1).latents

    def unet(x, t, emb):
        return comp.unet(x, t, encoder_hidden_states=emb).sample

    z0 = encode(clip[0])
    buffer = [a[k] * z0 + b[k] * noise[k] for k in range(1, n)]
    stock = [noise[k] for k in range(1, n)]
    outs = []
    for frame in clip:
        x = [a[0] * encode(frame) + b[0] * noise[0]] + buffer
        st = [noise[0]] + stock  # the newest frame's residual is exactly its entry noise
        if mode == "initialize":
            st[0] = unet(x[0], ts[0], uncond)  # the one real negative pass replaces it
        eps = []
        for k in range(n):
            eps_c = unet(x[k], ts[k], cond)
            eps_u = delta * st[k]
            eps.append(eps_u + g * (eps_c - eps_u))
        x0 = [c_out[k] * (x[k] - b[k] * eps[k]) / a[k] + c_skip[k] * x[k] for k in range(n)]
        stock = []
        for k in range(n - 1):
            dx = c_out[k] * (b[k] * st[k] - b[k] * eps[k]) / a[k] + c_skip[k] * b[k] * st[k]
            stock.append(noise[k + 1] + a[k + 1] * dx / b[k + 1])
        buffer = [a[k + 1] * x0[k] + b[k + 1] * noise[k + 1] for k in range(n - 1)]
        outs.append(x0[-1])
    return outs


@pytest.mark.parametrize("mode", ["self", "initialize"])
@pytest.mark.parametrize("idx", [(30,), (20, 40), (10, 25, 45)])
def test_rcfg_matches_the_formulas(comp, mode, idx):
    g, delta = 1.8, 0.7
    mods, seen = recording(comp)
    stream = StreamDiffusion(comp, StreamConfig(width=SIZE, height=SIZE, t_index_list=idx, cfg_type=mode,
                                                guidance_scale=g, delta=delta, seed=SEED, prompt="the cat",
                                                negative_prompt="an ant"), modules=mods)
    cond, uncond = diffusers_embeds(comp, "the cat", "an ant")
    clip = frames(len(idx) + 2, seed=11)
    for f in clip:
        stream(f)
    want = rcfg_reference(comp, clip, idx, mode, g, delta, cond, uncond)
    for got, exp in zip(seen, want):
        torch.testing.assert_close(got, exp, atol=5e-5, rtol=1e-4)


def test_self_negative_single_step_by_hand(comp):
    """n=1, self: eps = delta*noise + g*(eps_c - delta*noise); x0 = (x - b*eps)/a (c_skip ~ 0)."""
    g, delta = 2.0, 0.5
    mods, seen = recording(comp)
    stream = StreamDiffusion(comp, StreamConfig(width=SIZE, height=SIZE, t_index_list=(30,), cfg_type="self",
                                                guidance_scale=g, delta=delta, seed=SEED, prompt="the cat"),
                             modules=mods)
    frame = frames(1)[0]
    stream(frame)
    ts, a, b, c_skip, c_out = coefficients(comp, (30,))
    assert ts == [399] and c_skip[0] < 1e-6 and abs(c_out[0] - 1) < 1e-6
    cond, _ = diffusers_embeds(comp, "the cat", "")
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        z = comp.vae.encode(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1).latents
        x = a[0] * z + b[0] * noise
        eps_c = comp.unet(x, 399, encoder_hidden_states=cond).sample
    eps = delta * noise + g * (eps_c - delta * noise)
    torch.testing.assert_close(seen[0], (x - b[0] * eps) / a[0], atol=5e-5, rtol=1e-4)
    # and guidance really acts: it differs from the unguided prediction
    assert (seen[0] - (x - b[0] * eps_c) / a[0]).abs().max() > 1e-3


def test_guidance_modes_use_the_documented_unet_batch(comp):
    calls = []
    for mode, expected in [("none", 3), ("self", 3), ("full", 6), ("initialize", 4)]:
        stream = StreamDiffusion(comp, StreamConfig(width=SIZE, height=SIZE, t_index_list=(10, 25, 45),
                                                    cfg_type=mode, prompt="the cat"))
        unet = stream.modules.unet
        sizes = []
        stream.modules.unet = lambda s, t, e, _u=unet, _s=sizes: (_s.append(s.shape[0]), _u(s, t, e))[1]
        stream(frames(1)[0])
        calls.append((mode, sizes))
        assert sizes == [expected], (mode, sizes)
        assert stream.unet_batch == expected
