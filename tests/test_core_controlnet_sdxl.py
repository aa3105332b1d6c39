"""An SDXL ControlNet in the stream against diffusers' StableDiffusionXLControlNetImg2ImgPipeline
(tiny random SDXL model: pooled text embeddings and size ids reach the ControlNet too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionXLControlNetImg2ImgPipeline

from dreamcam.core.config import StreamConfig
from dreamcam.core.controlnet import ControlNetStack, ControlNetUnit, load_controlnet
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.preprocess import Canny
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_controlnet, make_tiny_model

SIZE, SEED = 64, 7


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-cn"), "sdxl")
    comp = load_components(ModelSpec(str(folder), tiny_vae=str(folder / "taesd"), local_files_only=True))
    net = load_controlnet(str(make_tiny_controlnet(folder, tmp_path_factory.mktemp("sdxl-cn") / "net", seed=2)), comp,
                          local_files_only=True)
    return comp, net


def frame() -> np.ndarray:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = np.stack([np.sin(6 * xx), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1)
    img = np.clip(127.5 * (base + 1) + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    img[16:48, 16:48] = 255
    return img


def test_sdxl_controlnet_step_equals_the_diffusers_pipeline(sdxl):
    comp, net = sdxl
    image, canny = frame(), Canny(50, 120)
    cfg = StreamConfig(width=SIZE, height=SIZE, t_index_list=(25,), cfg_type="full", guidance_scale=3.0, seed=SEED,
                       prompt="the cat", negative_prompt="an ant")
    stream = StreamDiffusion(comp, cfg)
    stream.set_controlnets(ControlNetStack([ControlNetUnit("canny", net, canny, 0.8)]))
    got = stream(image).astype(np.float32) / 255.0
    control = canny(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 127.5 - 1)
    pipe = StableDiffusionXLControlNetImg2ImgPipeline(
        vae=comp.vae, text_encoder=comp.text_encoder, text_encoder_2=comp.text_encoder_2, tokenizer=comp.tokenizer,
        tokenizer_2=comp.tokenizer_2, unet=comp.unet, controlnet=net,
        scheduler=LCMScheduler.from_config(comp.scheduler.config), requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=comp.force_zeros_for_empty_prompt, add_watermarker=False)
    want = pipe("the cat", image=image.astype(np.float32)[None] / 255.0, control_image=control, strength=0.5,
                num_inference_steps=2, guidance_scale=3.0, negative_prompt="an ant",
                generator=torch.Generator().manual_seed(SEED), controlnet_conditioning_scale=0.8,
                output_type="np").images[0]
    assert np.abs(got - want).max() <= 0.6 / 255.0
    plain = StreamDiffusion(comp, cfg)(image).astype(np.float32) / 255.0
    assert np.abs(plain - want).max() > 5 / 255.0  # the ControlNet really steers the image
