"""Random-weight SD-Turbo-architecture models from the JSON configs in bench/configs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).parent / "configs"


def load_config(name: str) -> dict:
    data = json.loads((CONFIGS / f"{name}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


@dataclass
class BenchModels:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def _tokenizer():
    """A small CLIP tokenizer (no vocabulary download); ids stay inside the real vocabulary."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(" ,.")
    tokens = letters + [s + "</w>" for s in letters] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def build(device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0, *, small: bool = False) -> BenchModels:
    """The real architectures with random weights, built directly on `device`.

    `small` shrinks every width (for checking the benchmark code on a CPU).
    """
    from diffusers import AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet_cfg, taesd_cfg, clip_cfg = load_config("sd_turbo_unet"), load_config("taesd"), load_config("clip_text")
    if small:
        unet_cfg.update(block_out_channels=[32, 32, 64, 64], attention_head_dim=[1, 1, 2, 2], layers_per_block=1,
                        norm_num_groups=8)
        taesd_cfg.update(encoder_block_out_channels=[8] * 4, decoder_block_out_channels=[8] * 4)
        clip_cfg.update(num_hidden_layers=1, intermediate_size=64, num_attention_heads=4)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderTiny(**taesd_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    for module in (unet, vae, text_encoder):
        module.to(dtype=dtype).eval().requires_grad_(False)
    scheduler = EulerDiscreteScheduler(**load_config("scheduler"))
    return BenchModels(unet, vae, text_encoder, _tokenizer(), scheduler)


def components(models: BenchModels, device: str, dtype: torch.dtype):
    """The core's `Components` around the bench models (no loading from disk)."""
    from diffusers import LCMScheduler

    from dreamcam.core.loading import Components

    return Components(
        unet=models.unet, vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
        scheduler=LCMScheduler.from_config(models.scheduler.config), family="sd21", vae_kind="tiny",
        prediction_type="epsilon", device=torch.device(device), dtype=dtype, source="bench-random",
    )


# ControlNets and depth models of the real sizes, random weights, built once per UNet and reused by
# every conditioning scenario (bench/scenarios.py): keyed by the UNet object
_CONTROLNETS: dict[tuple[int, int], Any] = {}
_DEPTH: dict[tuple[str, str], Any] = {}


def controlnet(unet: Any, index: int = 0, seed: int = 0) -> Any:
    """An SD 2.1-architecture ControlNet (`ControlNetModel.from_unet` of the bench UNet: the real
    ControlNet of that UNet, conditioning embedding 16-32-96-256) with random weights, also in its
    zero-initialised layers (so its residuals are not zero and the image shows them)."""
    key = (id(unet), index)
    if key not in _CONTROLNETS:
        from diffusers import ControlNetModel

        param = next(unet.parameters())
        torch.manual_seed(seed + index)
        with torch.device(param.device):
            net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)  # its architecture, fresh weights
            with torch.no_grad():
                for layer in [net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks,
                              net.controlnet_mid_block]:
                    torch.nn.init.normal_(layer.weight, std=0.02)
        _CONTROLNETS[key] = net.to(dtype=param.dtype).eval().requires_grad_(False)
    return _CONTROLNETS[key]


def depth_model(device: str, dtype: torch.dtype, seed: int = 0, side: int = 518) -> Any:
    """The `depth` preprocessor with a Depth-Anything-V2-Small-size model (transformers'
    DepthAnythingConfig defaults: DINOv2-S/14 backbone, 518 px input, 24.8 M parameters), random
    weights, with that model's input rule (518 or `side`, keep aspect, multiple of 14, ImageNet
    normalisation); one model, shared by every side."""
    key = (str(device), str(dtype))
    if key not in _DEPTH:
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

        from dreamcam.core.depth import Depth, DepthInput

        torch.manual_seed(seed)
        with torch.device(device):
            model = DepthAnythingForDepthEstimation(DepthAnythingConfig())
        _DEPTH[key] = model.to(dtype=dtype).eval().requires_grad_(False)
    return Depth(_DEPTH[key], DepthInput(height=side, width=side))
