"""Random-weight models with the real SD-Turbo / SDXL-Turbo architectures (JSON configs in bench/configs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).parent / "configs"
FAMILIES = ("sd21", "sdxl")
# SDXL's two text encoders run once per prompt (the stream caches the embeddings), never per frame:
# the benchmark keeps their widths (the UNet reads them) and cuts their depth to save memory and time
SDXL_TEXT_LAYERS = 2
# the CLIP ViT-H/14 image encoder of h94/IP-Adapter (models/image_encoder): 632M parameters
IMAGE_ENCODER_VIT_H = dict(hidden_size=1280, layers=32, heads=16, intermediate_size=5120, image_size=224, patch_size=14,
                           projection_dim=1024)


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
    family: str = "sd21"
    text_encoder_2: Any = None  # SDXL only
    tokenizer_2: Any = None


def _tokenizer():
    """A small CLIP tokenizer (no vocabulary download); ids stay inside the real vocabulary."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(" ,.")
    tokens = letters + [s + "</w>" for s in letters] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _small_text(cfg: dict) -> None:
    cfg.update(num_hidden_layers=1, intermediate_size=64, num_attention_heads=4)


def _build_sd21(small: bool) -> tuple[Any, Any, dict]:
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, taesd_cfg, clip_cfg = load_config("sd_turbo_unet"), load_config("taesd"), load_config("clip_text")
    if small:
        unet_cfg.update(block_out_channels=[32, 32, 64, 64], attention_head_dim=[1, 1, 2, 2], layers_per_block=1,
                        norm_num_groups=8)
        taesd_cfg.update(encoder_block_out_channels=[8] * 4, decoder_block_out_channels=[8] * 4)
        _small_text(clip_cfg)
    return (UNet2DConditionModel(**unet_cfg), AutoencoderTiny(**taesd_cfg),
            {"text_encoder": CLIPTextModel(CLIPTextConfig(**clip_cfg))})


def _build_sdxl(small: bool) -> tuple[Any, Any, dict]:
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_cfg, taesd_cfg = load_config("sdxl_unet"), load_config("taesdxl")
    text_l, text_g = load_config("sdxl_clip_text_l"), load_config("sdxl_clip_text_g")
    for cfg in (text_l, text_g):
        cfg["num_hidden_layers"] = SDXL_TEXT_LAYERS
    if small:  # the widths the UNet's conditioning needs (2048 = 768 + 1280, pooled 1280) stay
        unet_cfg.update(block_out_channels=[32, 64, 64], attention_head_dim=[1, 2, 2], layers_per_block=1,
                        norm_num_groups=8, transformer_layers_per_block=[1, 1, 1])
        taesd_cfg.update(encoder_block_out_channels=[8] * 4, decoder_block_out_channels=[8] * 4)
        _small_text(text_l)
        _small_text(text_g)
    return (UNet2DConditionModel(**unet_cfg), AutoencoderTiny(**taesd_cfg),
            {"text_encoder": CLIPTextModel(CLIPTextConfig(**text_l)),
             "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**text_g))})


def build(device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0, *, small: bool = False,
          family: str = "sd21") -> BenchModels:
    """The real architectures with random weights, built directly on `device`.

    `family` "sd21" (SD-Turbo) or "sdxl" (SDXL-Turbo, TAESD-XL); `small` shrinks every width
    (for checking the benchmark code on a CPU).
    """
    from diffusers import EulerDiscreteScheduler

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    torch.manual_seed(seed)
    with torch.device(device):
        unet, vae, texts = (_build_sdxl if family == "sdxl" else _build_sd21)(small)
    for module in (unet, vae, *texts.values()):
        module.to(dtype=dtype).eval().requires_grad_(False)
    scheduler = EulerDiscreteScheduler(**load_config("sdxl_scheduler" if family == "sdxl" else "scheduler"))
    tokenizers = {"tokenizer_2": _tokenizer()} if family == "sdxl" else {}
    return BenchModels(unet, vae, tokenizer=_tokenizer(), scheduler=scheduler, family=family, **texts, **tokenizers)


def components(models: BenchModels, device: str, dtype: torch.dtype):
    """The core's `Components` around the bench models (no loading from disk)."""
    from diffusers import LCMScheduler

    from dreamcam.core.loading import Components

    sdxl = models.family == "sdxl"
    return Components(
        unet=models.unet, vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
        scheduler=LCMScheduler.from_config(models.scheduler.config), family=models.family, vae_kind="tiny",
        prediction_type="epsilon", device=torch.device(device), dtype=dtype, source="bench-random",
        text_encoder_2=models.text_encoder_2, tokenizer_2=models.tokenizer_2, force_zeros_for_empty_prompt=sdxl,
    )


def ip_adapter(comps, device: str, dtype: torch.dtype, seed: int = 0, *, small: bool = False):
    """A random plain IP-Adapter (4 image tokens) for the bench UNet's cross-attention width (1024:
    h94 ships none for SD 2.1, so the SD 1.5 adapter's layout at SD 2.1 widths) with a random CLIP
    ViT-H/14 image encoder of the real size (`small`: tiny), built directly on `device`; not attached."""
    from transformers import CLIPVisionModelWithProjection

    from dreamcam.core.ip_adapter import build_ip_adapter, nest_state
    from dreamcam.core.tiny import image_encoder_config, ip_adapter_state

    config = image_encoder_config(**({} if small else IMAGE_ENCODER_VIT_H))
    torch.manual_seed(seed)
    with torch.device(device):
        encoder = CLIPVisionModelWithProjection(config)
    state = nest_state(ip_adapter_state(comps.unet, config.projection_dim, seed=seed))
    return build_ip_adapter(state, encoder.to(dtype=dtype), comps, source="bench-random-ip-adapter")
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
    from dreamcam.core.depth import Depth, DepthInput

    key = (str(device), str(dtype))
    if key not in _DEPTH:  # built once: a second scenario (cn-two after cn-depth) reuses the model
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

        torch.manual_seed(seed)
        with torch.device(device):
            model = DepthAnythingForDepthEstimation(DepthAnythingConfig())
        _DEPTH[key] = model.to(dtype=dtype).eval().requires_grad_(False)
    return Depth(_DEPTH[key], DepthInput(height=side, width=side))
