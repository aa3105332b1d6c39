"""The reference: diffusers' StableDiffusionImg2ImgPipeline on the same components."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .timing import FrameStats, frame_times


def make_pipeline(models: Any):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(
        vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=models.unet,
        scheduler=models.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(models: Any, size: tuple[int, int], frames: int, device: str, dtype: torch.dtype) -> dict[str, FrameStats]:
    """1-step img2img (strength 0.5 of 2 steps), cached prompt embeddings, no guidance."""
    from PIL import Image

    pipe = make_pipeline(models)
    height, width = size
    with torch.inference_mode():
        embeds = pipe.encode_prompt("a watercolor painting", device, 1, False)[0]
    rng = np.random.default_rng(0)
    pil_frames = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(4)]
    tensor_frames = [torch.rand(1, 3, height, width, device=device, dtype=dtype) for _ in range(4)]
    common = dict(prompt_embeds=embeds, strength=0.5, num_inference_steps=2, guidance_scale=0.0)

    def pil_frame(i: int) -> None:
        out = pipe(image=pil_frames[i % 4], output_type="pil", **common).images[0]
        assert out.size == (width, height)

    def tensor_frame(i: int) -> None:
        out = pipe(image=tensor_frames[i % 4], output_type="pt", **common).images
        assert out.shape[-2:] == (height, width)

    with torch.inference_mode():
        return {"pil": frame_times(pil_frame, frames, warmup=2), "tensor": frame_times(tensor_frame, frames, warmup=2)}
