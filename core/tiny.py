"""Tiny random-weight diffusers models for tests and the offline demo.

The models have the real architectures (UNet2DConditionModel, CLIPTextModel, AutoencoderKL,
AutoencoderTiny) and the real embedding widths of their family (768 for SD 1.5, 1024 for
SD 2.1 / SD-Turbo, 2048 for SDXL), so family detection and the whole loading path run
unchanged; only the channel counts and layer counts are tiny. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("sd15", "sd21", "sdxl")
_TEXT_WIDTH = {"sd15": 768, "sd21": 1024}
_SCHEDULER_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _tokenizer():
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    symbols = letters + [str(d) for d in range(10)] + list(",.!?-'")
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r</w>"), ("o", "n</w>")]
    tokens += ["th", "the</w>", "an", "in", "er</w>", "on</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _text_encoder(width: int, vocab_size: int, *, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config)


def _unet(family: str):
    from diffusers import UNet2DConditionModel

    kwargs: dict = {}
    if family == "sdxl":
        kwargs = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 1280,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=2048 if family == "sdxl" else _TEXT_WIDTH[family],
        attention_head_dim=8,
        norm_num_groups=8,
        **kwargs,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _taesd():
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )


def _scheduler(family: str):
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    if family == "sd15":
        return LCMScheduler(**_SCHEDULER_BETAS, prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
    return EulerDiscreteScheduler(**_SCHEDULER_BETAS, prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)


def make_tiny_model(folder: str | Path, family: str = "sd21", *, with_taesd: bool = True, seed: int = 0) -> Path:
    """Build a tiny random diffusers pipeline of `family` and save it to `folder` (created).

    Returns the folder. With `with_taesd` a tiny AutoencoderTiny is saved in `folder/taesd`.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    vocab_size = len(tokenizer)
    parts = dict(unet=_unet(family), vae=_vae(), scheduler=_scheduler(family), tokenizer=tokenizer)
    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        parts["text_encoder"] = _text_encoder(768, vocab_size)
        parts["text_encoder_2"] = _text_encoder(1280, vocab_size, projection=True)
        parts["tokenizer_2"] = _tokenizer()
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        from diffusers import StableDiffusionPipeline

        parts["text_encoder"] = _text_encoder(_TEXT_WIDTH[family], vocab_size)
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.save_pretrained(folder)
    if with_taesd:
        _taesd().save_pretrained(folder / "taesd")
    return folder
