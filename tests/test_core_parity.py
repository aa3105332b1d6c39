"""Proof: the stream equals plain sequential denoising built from diffusers parts.

The reference runs each frame on its own through diffusers' LCMScheduler (add_noise and the
`denoised` output of step) with the same timesteps and the same per-slot noise, one UNet call
per step; the stream runs all steps of all frames in flight in ONE UNet call per frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.modules import StepModules, eager_modules
from dreamcam.core.stream import StreamDiffusion

SIZE = 64
SEED = 7


@pytest.fixture(scope="module")
def comp(tiny_sd15_dir):
    return load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd")))


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """A moving smooth pattern plus a little noise (so frames differ but are image-like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = []
    for i in range(count):
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy) + 2 * i)], -1)
        img = 127.5 * (base + 1) + rng.normal(0, 8, base.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def recording(comp) -> tuple[StepModules, list[torch.Tensor]]:
    """Eager modules whose decode records its input latents."""
    mods, seen = eager_modules(comp), []

    def decode(latents):
        seen.append(latents.detach().clone())
        return base_decode(latents)

    base_decode = mods.decode
    return StepModules(unet=mods.unet, encode=mods.encode, decode=decode), seen


def diffusers_embeds(comp, prompt: str, negative: str):
    pipe = StableDiffusionPipeline(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer,
                                   unet=comp.unet, scheduler=comp.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    return cond, uncond


@torch.no_grad()
def reference(comp, frame, idx, noises, cond, uncond=None, guidance=1.0):
    """One frame, sequentially: encode, noise to t_0, per step UNet + LCM denoise + re-noise."""
    sched = LCMScheduler.from_config(comp.scheduler.config)
    sched.set_timesteps(50)
    ts = [int(sched.timesteps[i]) for i in idx]
    sched.set_timesteps(timesteps=ts)
    image = VaeImageProcessor().preprocess(frame[None].astype(np.float32) / 255.0)
    z = comp.vae.encode(image).latents * comp.vae.config.scaling_factor
    x = sched.add_noise(z, noises[0], torch.tensor([ts[0]]))
    for k, t in enumerate(ts):
        if uncond is None:
            eps = comp.unet(x, t, encoder_hidden_states=cond).sample
        else:
            eps_u, eps_c = comp.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        denoised = sched.step(eps, t, x).denoised
        if k + 1 < len(ts):
            x = sched.add_noise(denoised, noises[k + 1], torch.tensor([ts[k + 1]]))
    return denoised


def slot_noise(n: int, fbs: int) -> torch.Tensor:
    return torch.randn((n * fbs, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(SEED))


@pytest.mark.parametrize("idx", [(35,), (20, 40), (10, 25, 45)])
@pytest.mark.parametrize("cfg_type", ["none", "full"])
def test_stream_batch_equals_sequential_reference(comp, idx, cfg_type):
    n, guidance = len(idx), 2.5
    mods, seen = recording(comp)
    config = StreamConfig(width=SIZE, height=SIZE, t_index_list=idx, cfg_type=cfg_type, guidance_scale=guidance,
                          seed=SEED, prompt="the cat", negative_prompt="an ant")
    stream = StreamDiffusion(comp, config, modules=mods)
    cond, uncond = diffusers_embeds(comp, "the cat", "an ant")
    if cfg_type == "none":
        uncond = None
    noise = slot_noise(n, 1)
    clip = frames(n + 3)
    outputs = [stream(f) for f in clip]
    for call, latents in enumerate(seen):
        if call >= n - 1:  # after warm-up: frame call-(n-1) has finished its last step
            frame, first_slot = clip[call - (n - 1)], 0
        else:  # warm-up: the primed first frame, entered at slot n-1-call
            frame, first_slot = clip[0], n - 1 - call
        want = reference(comp, frame, idx[first_slot:], noise[first_slot:], cond, uncond, guidance)
        torch.testing.assert_close(latents, want, atol=2e-5, rtol=1e-4)
    assert all(o.std() > 1 for o in outputs), "outputs must be real images, never flat warm-up frames"


def test_v_prediction_model_matches_the_reference(tmp_path):
    """A v-prediction model (SD 2.1-768 style): the stream converts v to epsilon itself."""
    from dreamcam.core.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path / "vpred", "sd21", prediction_type="v_prediction")
    comp = load_components(ModelSpec(str(folder), tiny_vae=str(folder / "taesd"), local_files_only=True))
    assert comp.prediction_type == "v_prediction" and comp.scheduler.config.prediction_type == "v_prediction"
    idx = (20, 40)
    mods, seen = recording(comp)
    stream = StreamDiffusion(comp, StreamConfig(width=SIZE, height=SIZE, t_index_list=idx, cfg_type="none",
                                                seed=SEED, prompt="the cat"), modules=mods)
    cond, _ = diffusers_embeds(comp, "the cat", "")
    noise = slot_noise(2, 1)
    clip = frames(3, seed=2)
    for f in clip:
        stream(f)
    for call in (1, 2):
        want = reference(comp, clip[call - 1], idx, noise, cond)
        torch.testing.assert_close(seen[call], want, atol=2e-5, rtol=1e-4)


def test_frame_buffer_two_frames_two_steps_keeps_order(comp):
    idx, fbs = (20, 40), 2
    mods, seen = recording(comp)
    stream = StreamDiffusion(comp, StreamConfig(width=SIZE, height=SIZE, t_index_list=idx, cfg_type="none",
                                                frame_buffer_size=fbs, seed=SEED, prompt="the cat"), modules=mods)
    cond, _ = diffusers_embeds(comp, "the cat", "")
    noise = slot_noise(2, fbs)
    clip = frames(8, seed=3)
    for call in range(4):
        out = stream(np.stack(clip[2 * call: 2 * call + 2]))
        assert out.shape == (fbs, SIZE, SIZE, 3)
    for call in range(1, 4):
        for j in range(fbs):  # frame j of the previous call leaves now, in position j
            frame = clip[2 * (call - 1) + j]
            want = reference(comp, frame, idx, [noise[j: j + 1], noise[fbs + j: fbs + j + 1]], cond)
            torch.testing.assert_close(seen[call][j: j + 1], want, atol=2e-5, rtol=1e-4)


def test_one_step_full_guidance_equals_diffusers_img2img_pipeline(comp):
    """diffusers' own img2img pipeline with its LCM scheduler at 2 steps and strength 0.5 runs
    exactly one step at t=499 (index 25); same seed -> same noise -> same image."""
    pipe = StableDiffusionImg2ImgPipeline(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer,
                                          unet=comp.unet, scheduler=LCMScheduler.from_config(comp.scheduler.config),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    frame = frames(1, seed=5)[0]
    steps_run: list[int] = []

    def note_step(pipeline, i, t, kwargs):
        steps_run.append(int(t))
        return kwargs

    want = pipe("the cat", image=frame.astype(np.float32)[None] / 255.0, strength=0.5, num_inference_steps=2,
                guidance_scale=3.0, negative_prompt="an ant", generator=torch.Generator().manual_seed(SEED),
                output_type="np", callback_on_step_end=note_step).images[0]
    assert steps_run == [499]
    stream = StreamDiffusion(comp, StreamConfig(width=SIZE, height=SIZE, t_index_list=(25,), cfg_type="full",
                                                guidance_scale=3.0, seed=SEED, prompt="the cat",
                                                negative_prompt="an ant"))
    got = stream(frame).astype(np.float32) / 255.0
    assert np.abs(got - want).max() <= 0.6 / 255.0
    assert want.std() > 0.01
