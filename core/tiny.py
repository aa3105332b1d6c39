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


@torch.no_grad()
def _calibrate_taesd(vae) -> None:
    """Rescale the last encoder and decoder convs of a random TAESD so latents have unit spread and
    decoded images sit mid-range (a random decoder otherwise saturates every pixel to 0 or 255)."""
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    enc = vae.encoder.layers[-1]
    latents = vae.encoder(images)
    enc.weight.mul_(1.0 / latents.std())
    enc.bias.mul_(1.0 / latents.std())
    dec = vae.decoder.layers[-1]
    raw = vae.decoder.layers(torch.tanh(vae.encoder(images) / 3) * 3)  # before the [0,1] -> [-1,1] map
    mean, std = raw.mean((0, 2, 3)), raw.std((0, 2, 3))
    scale = 0.2 / std
    dec.weight.mul_(scale[:, None, None, None])
    dec.bias.copy_((dec.bias - mean) * scale + 0.5)


def _taesd():
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    _calibrate_taesd(vae)
    return vae


def _scheduler(family: str, prediction_type: str):
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    kind = LCMScheduler if family == "sd15" else EulerDiscreteScheduler
    spacing = "leading" if family == "sd15" else "trailing"
    return kind(**_SCHEDULER_BETAS, prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=1)


def make_tiny_model(folder: str | Path, family: str = "sd21", *, with_taesd: bool = True, seed: int = 0,
                    prediction_type: str = "epsilon") -> Path:
    """Build a tiny random diffusers pipeline of `family` and save it to `folder` (created).

    Returns the folder. With `with_taesd` a tiny AutoencoderTiny is saved in `folder/taesd`.
    `prediction_type` ("epsilon" or "v_prediction") goes into the scheduler config.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    vocab_size = len(tokenizer)
    parts = dict(unet=_unet(family), vae=_vae(), scheduler=_scheduler(family, prediction_type), tokenizer=tokenizer)
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


# --------------------------------------------------------------------------- single-file checkpoints
_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key_to_ldm(key: str, layers: int, up_attention: list[bool]) -> str:
    parts = key.split(".")
    head = parts[0]
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for src, dst in fixed.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    if head in ("down_blocks", "up_blocks"):
        block, kind, idx, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if head == "down_blocks":
            if kind == "downsamplers":
                return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
            row, group = 1 + block * (layers + 1) + idx, "input_blocks"
        else:
            if kind == "upsamplers":
                slot = 2 if up_attention[block] else 1
                return f"output_blocks.{block * (layers + 1) + layers}.{slot}.{rest}"
            row, group = block * (layers + 1) + idx, "output_blocks"
        if kind == "resnets":
            name, tail = rest.split(".", 1)
            return f"{group}.{row}.0.{_RESNET_LDM[name]}.{tail}"
        return f"{group}.{row}.1.{rest}"
    if head == "mid_block":
        kind, idx, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            name, tail = rest.split(".", 1)
            return f"middle_block.{0 if idx == 0 else 2}.{_RESNET_LDM[name]}.{tail}"
        return f"middle_block.1.{rest}"
    raise KeyError(key)


def _vae_key_to_ldm(key: str, levels: int, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    parts = key.split(".")
    side = parts[0]
    if parts[1] in ("down_blocks", "up_blocks"):
        level = int(parts[2]) if side == "encoder" else levels - 1 - int(parts[2])
        word = "down" if side == "encoder" else "up"
        rest = ".".join(parts[5:])
        if parts[3] == "resnets":
            rest = rest.replace("conv_shortcut", "nin_shortcut")
            return f"{side}.{word}.{level}.block.{parts[4]}.{rest}", value
        return f"{side}.{word}.{level}.{'downsample' if side == 'encoder' else 'upsample'}.{rest}", value
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(parts[3]) + 1}.{rest}", value
        rest = ".".join(parts[4:])
        for src, dst in _VAE_ATTN_LDM.items():
            if rest.startswith(src + "."):
                if value.ndim == 2:
                    value = value[:, :, None, None]
                return f"{side}.mid.attn_1.{dst}{rest[len(src):]}", value
    if parts[1] == "conv_norm_out":
        return f"{side}.norm_out.{parts[2]}", value
    return key, value


def save_single_file(model_dir: str | Path, path: str | Path) -> Path:
    """Write a tiny SD 1.5 diffusers folder as one original-layout (LDM) .safetensors checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    model_dir, path = Path(model_dir), Path(path)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    text = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    if unet.config.cross_attention_dim != 768:
        raise ValueError("save_single_file writes SD 1.5 layouts only")
    layers = unet.config.layers_per_block
    up_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    state: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        state["model.diffusion_model." + _unet_key_to_ldm(key, layers, up_attention)] = value
    levels = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        new_key, new_value = _vae_key_to_ldm(key, levels, value)
        state["first_stage_model." + new_key] = new_value
    for key, value in text.state_dict().items():
        inner = key if key.startswith("text_model.") else "text_model." + key  # transformers >= 5.6 is flat
        state["cond_stage_model.transformer." + inner] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


_ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _random_lora_layers(model_dir: str | Path, rank: int, seed: int, targets: tuple[str, ...]) -> dict:
    """Random (non-zero) LoRA factors for the tiny model's UNet, in PEFT key format."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(Path(model_dir), subfolder="unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=list(targets)))
    return get_peft_model_state_dict(unet)


def make_tiny_lora(model_dir: str | Path, folder: str | Path, *, rank: int = 4, seed: int = 0,
                   targets: tuple[str, ...] = _ATTENTION_TARGETS) -> Path:
    """Save a random (non-zero) LoRA for the tiny model's UNet layers `targets` (default: the attention
    projections) in diffusers' LoRA format (`folder/pytorch_lora_weights.safetensors`); another seed
    gives another LoRA. Stands in for LCM-LoRA and style LoRAs in tests."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    layers = convert_state_dict_to_diffusers(_random_lora_layers(model_dir, rank, seed, targets))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder


def make_tiny_kohya_lora(model_dir: str | Path, path: str | Path, *, rank: int = 4, alpha: float = 2.0,
                         seed: int = 0, targets: tuple[str, ...] = _ATTENTION_TARGETS) -> Path:
    """Save a random LoRA as ONE kohya-format .safetensors file (`lora_unet_*` keys, `.alpha` per layer,
    so its peft scale is alpha / rank), the layout of most LoRAs shared as single files."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    layers = {"unet." + k: v for k, v in _random_lora_layers(model_dir, rank, seed, targets).items()}
    state = convert_state_dict_to_kohya(layers)
    state = {k: (torch.tensor(float(alpha)) if k.endswith(".alpha") else v.contiguous()) for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def make_tiny_controlnet(model_dir: str | Path, folder: str | Path, *, seed: int = 0) -> Path:
    """Save a ControlNetModel made from the tiny model's UNet (`from_unet`, its architecture and
    weights) to `folder` with save_pretrained. The layers a fresh ControlNet starts at zero (the
    condition embedding's last conv and the residual projections) get random weights, so its
    residuals are not zero and a test sees the net act."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(Path(model_dir), subfolder="unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
    zero_started = [net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block]
    with torch.no_grad():
        # He-initialised condition embedding: with the default init its signal fades layer by layer and
        # the net would hardly depend on the control image (a test could not tell two images apart)
        for layer in net.controlnet_cond_embedding.modules():
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        for layer in zero_started:
            torch.nn.init.normal_(layer.weight, std=0.2)
            torch.nn.init.normal_(layer.bias, std=0.05)
    folder = Path(folder)
    net.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- IP-Adapter
def image_encoder_config(*, hidden_size: int = 32, layers: int = 2, heads: int = 4, intermediate_size: int = 37,
                         image_size: int = 32, patch_size: int = 8, projection_dim: int = 32):
    """A CLIPVisionConfig (tiny by default; `bench/` passes the ViT-H sizes)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                            projection_dim=projection_dim)


def ip_adapter_state(unet, image_embed_dim: int, *, seed: int = 0, tokens: int = 4,
                     kind: str = "plain") -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights for `unet` in the original flat layout of h94's files (float32, CPU):
    `ip_adapter.<2i+1>.to_{k,v}_ip.weight` for the i-th cross-attention layer and the image projection:
    plain = `image_proj.proj.{weight,bias}` (image embedding -> `tokens` x cross-attention width) +
    `image_proj.norm.*`; plus = the Plus resampler (`latents`, `proj_in`, 4 blocks of `layers.<i>.0.*`
    attention and `layers.<i>.1.*` feed-forward, `proj_out`, `norm_out`) on `image_embed_dim`-wide
    encoder hidden states. Scaled like a trained layer's default init."""
    from .ip_adapter import cross_attention_layers

    gen = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)

    def rand(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    if kind == "plain":
        proj = {"proj.weight": rand(tokens * cross, image_embed_dim, std=image_embed_dim ** -0.5),
                "proj.bias": rand(tokens * cross, std=0.1), "norm.weight": 1 + rand(cross, std=0.1),
                "norm.bias": rand(cross, std=0.1)}
    elif kind == "plus":
        proj = _plus_resampler_state(image_embed_dim, cross, tokens, seed)
    else:
        raise ValueError(f"kind must be plain or plus, got {kind!r}")
    state = {f"image_proj.{k}": v for k, v in proj.items()}
    for i, (_, attn) in enumerate(cross_attention_layers(unet)):
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * i + 1}.{part}.weight"] = rand(int(attn.inner_dim), cross, std=cross ** -0.5)
    return state


def _plus_resampler_state(embed_dims: int, output_dims: int, tokens: int, seed: int,
                          hidden_dims: int = 32) -> dict[str, torch.Tensor]:
    """A random diffusers IPAdapterPlusImageProjection (depth 4, one 64-wide head: the depth and head
    width diffusers' converter assumes) with its keys put back into the original resampler layout."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    resampler = IPAdapterPlusImageProjection(embed_dims=embed_dims, output_dims=output_dims, hidden_dims=hidden_dims,
                                             depth=4, dim_head=64, heads=1, num_queries=tokens)
    ours = resampler.state_dict()
    renames = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
               "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
    state = {}
    for key, value in ours.items():
        if not key.startswith("layers."):
            state[key] = value.clone()
            continue
        _, block, rest = key.split(".", 2)
        if rest.startswith(("attn.to_k.", "attn.to_v.")):
            if rest.startswith("attn.to_k."):
                state[f"layers.{block}.0.to_kv.weight"] = torch.cat(
                    [value, ours[f"layers.{block}.attn.to_v.weight"]])
            continue
        for new, old in renames.items():
            if rest.startswith(new + "."):
                state[f"layers.{block}.{old}{rest[len(new):]}"] = value.clone()
                break
        else:
            raise KeyError(key)
    return state


def make_tiny_ip_adapter(model_dir: str | Path, path: str | Path, *, seed: int = 0, kind: str = "plain") -> Path:
    """Save a random IP-Adapter ("plain" or "plus") for the tiny model's UNet as ONE original-layout
    .safetensors file at `path`, and a tiny CLIPVisionModelWithProjection (save_pretrained) as
    `image_encoder/` beside it: the h94/IP-Adapter layout (models/ip-adapter_sd15.safetensors +
    models/image_encoder/), which both `core.ip_adapter.load_ip_adapter` and diffusers'
    `load_ip_adapter` read."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = image_encoder_config()
    CLIPVisionModelWithProjection(config).save_pretrained(path.parent / "image_encoder")
    unet = UNet2DConditionModel.from_pretrained(Path(model_dir), subfolder="unet")
    width = config.projection_dim if kind == "plain" else config.hidden_size
    state = ip_adapter_state(unet, width, seed=seed, kind=kind)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
def make_tiny_depth_model(folder: str | Path, *, seed: int = 0, input_side: int = 42) -> Path:
    """Save a tiny random Depth Anything model (DINOv2 backbone, DPT neck and head: the real
    architecture with tiny widths) and its image-processor config (`input_side` x `input_side`,
    keep aspect ratio, multiple of the patch size 14, ImageNet normalisation) to `folder`."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=42,
                            patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 8, 16, 16],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():  # the default init gives depths of ~1e-7; real models give ~0.1..100
        for param in model.head.parameters():
            torch.nn.init.normal_(param, std=0.5)
        model.head.conv3.bias.fill_(2.0)  # mostly above the final ReLU: a depth map with structure
    folder = Path(folder)
    model.save_pretrained(folder)
    DPTImageProcessorPil(size={"height": input_side, "width": input_side}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                         do_pad=False).save_pretrained(folder)
    return folder
