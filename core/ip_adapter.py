"""IP-Adapter: a style or reference image steers the UNet through extra image tokens in its cross-attention.

Loading (`load_ip_adapter`) reads the adapter weights in the original IP-Adapter layout
(`image_proj.*` + `ip_adapter.<id>.to_k_ip/to_v_ip.weight`, as h94/IP-Adapter ships them) and its CLIP
image encoder (`CLIPVisionModelWithProjection`), checks that they fit the loaded UNet (family, layer
count and widths) and builds everything beside the UNet without touching it; `attach()` /
`detach()` (called by `StreamDiffusion.set_ip_adapter`) put it on / take it off the UNet.

On the UNet it works as diffusers' `load_ip_adapter` does: `unet.encoder_hid_proj` becomes a
`MultiIPAdapterImageProjection` of diffusers' image projection (built by diffusers' own converter
`_convert_ip_adapter_image_proj_to_diffusers`) and `encoder_hid_dim_type` "ip_image_proj", so the UNet
takes `added_cond_kwargs["image_embeds"]` and hands (text, [image tokens]) to the cross-attention
processors. The processors are this module's `IPAttnProcessor`, not diffusers'
`IPAdapterAttnProcessor2_0`: diffusers keeps the scale as a Python float (and skips the work when it
is 0), which a CUDA graph or torch.compile would bake in. Here the scale is one 0-d float32 device
tensor shared by all processors of the adapter and rewritten in place (`set_scale`): the same
arithmetic (text attention + scale * image attention), no recapture, no recompilation. Scale 0
adds exactly zero (the image attention still runs).

The style image is encoded once (diffusers' `CLIPImageProcessor` preprocessing, then the image
encoder) into the persistent `image_embeds` tensor (1, 1, *embed), written in place; the stream
copies it into the UNet batch rows (unconditional CFG rows get `uncond_embeds`: zeros for plain
adapters, the encoding of a zero image for Plus / full-face ones, as diffusers does). Only the
attached adapter, never the image or the scale, changes `structure_key`.

Kinds: "plain" (ip-adapter_sd15, ip-adapter_sdxl, ..._vit-h: 4 tokens from the projected CLIP
image embedding), "plus" (the resampler on the encoder's penultimate hidden states) and "full"
(full-face). FaceID adapters take face-recognition embeddings (insightface), not CLIP ones: refused.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .loading import FAMILY_CROSS_ATTENTION, FAMILY_LABELS, Components, ModelLoadError, _explain
from .modules import IMAGE_EMBEDS, Condition

Tensor = torch.Tensor
WEIGHT_SUFFIXES = (".safetensors", ".bin")
EXAMPLE_SOURCE = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
_SERIAL = itertools.count(1)
_HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class IPAdapterError(ModelLoadError, ValueError):
    """An IP-Adapter, its image encoder or a style image could not be used; the message names it and
    the fix. A ModelLoadError (a load that failed) and a ValueError (a live setting the stream
    rejects, the settings kept)."""


# --------------------------------------------------------------------------- the attention processor
class IPAttnProcessor(torch.nn.Module):
    """Cross-attention with IP-Adapter image tokens: attn(q, text) + scale * attn(q, image tokens).

    The arithmetic of diffusers' IPAdapterAttnProcessor2_0 for one adapter without masks, with
    `scale` a shared 0-d device tensor (read at run time: captured graphs and compiled code see a
    new value written in place). Weights `to_k_ip.0` / `to_v_ip.0` as diffusers names them."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, scale: Tensor) -> None:
        super().__init__()
        self.to_k_ip = torch.nn.ModuleList([torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.to_v_ip = torch.nn.ModuleList([torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.scale = scale  # a plain attribute, not a buffer: module.to() must not replace the shared tensor

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: tuple | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        if not isinstance(encoder_hidden_states, tuple):
            raise TypeError("IPAttnProcessor: the UNet passed no image tokens; it needs the 'image_embeds' input "
                            "(the IP-Adapter is attached, see StreamDiffusion.set_ip_adapter)")
        text, (image_tokens,) = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, length, _ = text.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        key, value = attn.to_k(text), attn.to_v(text)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: Tensor) -> Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        def merge(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        query = heads(query)
        out = merge(F.scaled_dot_product_attention(query, heads(key), heads(value), attn_mask=attention_mask,
                                                   dropout_p=0.0, is_causal=False))
        ip_key, ip_value = self.to_k_ip[0](image_tokens), self.to_v_ip[0](image_tokens)
        ip_out = merge(F.scaled_dot_product_attention(query, heads(ip_key), heads(ip_value), attn_mask=None,
                                                      dropout_p=0.0, is_causal=False))
        out = out + self.scale * ip_out  # a 0-d float32 tensor: the result keeps out's dtype
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# --------------------------------------------------------------------------- weights: layout and fit
def adapter_kind(image_proj: Mapping[str, Tensor]) -> str:
    """"plain", "plus" or "full" from the image projection's keys; IPAdapterError for FaceID / unknown."""
    if "proj.weight" in image_proj:
        return "plain"
    if "proj.3.weight" in image_proj:
        return "full"
    if "perceiver_resampler.proj_in.weight" in image_proj or "norm.weight" in image_proj:
        raise IPAdapterError("it is a FaceID IP-Adapter: FaceID takes face-recognition embeddings (insightface), "
                             "which Dreamcam does not compute; use a plain or Plus IP-Adapter")
    if "latents" in image_proj and "proj_in.weight" in image_proj:
        return "plus"
    raise IPAdapterError("its image projection has none of the known layouts (plain 'proj.weight', Plus "
                         "'latents' + 'proj_in.weight', full-face 'proj.3.weight')")


def _layer_keys(ip: Mapping[str, Tensor]) -> list[int]:
    """The adapter's layer ids (the odd numbers 1, 3, 5, ...: original IP-Adapter files count every
    attention processor and keep the cross-attention ones), in order."""
    ids = sorted(int(k.split(".")[0]) for k in ip if re.fullmatch(r"\d+\.to_k_ip\.weight", k))
    return ids


def adapter_width(state: Mapping[str, Mapping[str, Tensor]]) -> int | None:
    """The width of the image tokens (= the text embeddings of the model it was trained for)."""
    ids = _layer_keys(state["ip_adapter"])
    return int(state["ip_adapter"][f"{ids[0]}.to_k_ip.weight"].shape[1]) if ids else None


def _family_of_width(width: int | None) -> str | None:
    return {w: f for f, w in FAMILY_CROSS_ATTENTION.items()}.get(width)


def cross_attention_layers(unet) -> list[tuple[str, Any]]:
    """(processor name, Attention module) of every cross-attention layer, in the UNet's processor order."""
    modules = dict(unet.named_modules())
    return [(name, modules[name[: -len(".processor")]]) for name in unet.attn_processors
            if not name.endswith("attn1.processor") and "motion_modules" not in name
            and not name.startswith("encoder_hid_proj.")]  # a Plus resampler's own attention (attached adapter)


def check_fits(source: str, state: Mapping[str, Mapping[str, Tensor]], components: Components) -> str:
    """The adapter's kind; IPAdapterError (one line naming `source`) unless it fits the loaded UNet."""
    try:
        kind = adapter_kind(state["image_proj"])
    except IPAdapterError as exc:
        raise IPAdapterError(f"IP-Adapter {source!r}: {exc}") from None
    model = FAMILY_LABELS.get(components.family, components.family)
    ours = int(components.unet.config.cross_attention_dim)
    width = adapter_width(state)
    if width is None:
        raise IPAdapterError(f"IP-Adapter {source!r}: it has no cross-attention weights "
                             "('ip_adapter.<n>.to_k_ip.weight')")
    if width != ours:
        family = _family_of_width(width)
        what = (f"an {FAMILY_LABELS[family]} IP-Adapter" if family else "an IP-Adapter of an unknown model family")
        hint = " (h94/IP-Adapter has none for SD 2.1)" if components.family == "sd21" else ""
        raise IPAdapterError(f"IP-Adapter {source!r}: it is {what} (its image tokens are {width} wide), but the loaded "
                             f"model is {model} ({ours}); use an IP-Adapter trained for {model}{hint}")
    ip, ids, layers = state["ip_adapter"], _layer_keys(state["ip_adapter"]), cross_attention_layers(components.unet)
    if len(ids) != len(layers):
        raise IPAdapterError(f"IP-Adapter {source!r}: it has {len(ids)} cross-attention layers, the loaded {model} "
                             f"UNet {len(layers)}; use an IP-Adapter made for this model's architecture")
    for key_id, (name, attn) in zip(ids, layers):
        want = (int(attn.inner_dim), ours)
        for part in ("to_k_ip", "to_v_ip"):
            got = tuple(ip.get(f"{key_id}.{part}.weight", torch.empty(0)).shape)
            if got != want:
                layer = name[: -len(".processor")]
                raise IPAdapterError(f"IP-Adapter {source!r}: its layer {key_id}.{part} has shape {got}, the UNet's "
                                     f"{layer} needs {want}; use an IP-Adapter made for this model")
    return kind


def encoder_width_problem(kind: str, image_proj: Mapping[str, Tensor], encoder_config: Any) -> str | None:
    """None when the image encoder feeds the adapter's projection, else what differs."""
    if kind == "plain":
        theirs, ours = int(image_proj["proj.weight"].shape[1]), int(encoder_config.projection_dim)
        what = "projected embeddings"
    else:
        key = "proj_in.weight" if kind == "plus" else "proj.0.weight"
        theirs, ours, what = int(image_proj[key].shape[1]), int(encoder_config.hidden_size), "hidden states"
    if theirs == ours:
        return None
    return f"the image encoder gives {ours}-wide {what}, the IP-Adapter takes {theirs}"


# --------------------------------------------------------------------------- the adapter
class IPAdapter:
    """One loaded IP-Adapter with its image encoder, live scale and current style image.

    Live, between frames, no recapture: `set_scale(s)` (in place), `set_image(image)` (encodes,
    then writes `image_embeds` in place; `encode_image` alone may run in a background thread).
    `attach()` / `detach()` put the adapter on / off the components' UNet; `StreamDiffusion.
    set_ip_adapter` calls them (the UNet then needs the `image_embeds` input in every call)."""

    def __init__(self, source: str, kind: str, components: Components, projection: torch.nn.Module,
                 processors: dict[str, IPAttnProcessor], scale: Tensor, image_encoder, image_processor) -> None:
        self.source, self.kind, self.components = source, kind, components
        self.projection, self.processors, self.scale_tensor = projection, processors, scale
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.serial = next(_SERIAL)
        self._scale = 0.0
        self.image_version = 0  # +1 on every set_image: the stream rewrites its rows when it changed
        self.image_source: str | None = None  # what set_image was given last (a path, or a description)
        self._saved: tuple[dict, Any] | None = None  # the UNet's processors and hid type before attach()
        self.uncond_embeds = self._encode_pixels(self._zero_pixels(), uncond=True)
        self.image_embeds = self.uncond_embeds.clone()

    # ------------------------------------------------------------------ what the stream needs
    @property
    def scale(self) -> float:
        return self._scale

    @property
    def condition(self) -> Condition:
        """The UNet input this adapter adds: `image_embeds` (B, 1, *embed) in the model dtype."""
        return Condition(IMAGE_EMBEDS, tuple(self.image_embeds.shape[1:]))

    @property
    def structure_key(self) -> tuple:
        """Identifies this loaded adapter (its modules); never changes with the scale or the image."""
        return ("ip_adapter", self.serial, self.source, self.kind)

    @property
    def attached(self) -> bool:
        return self._saved is not None

    # ------------------------------------------------------------------ live controls
    def set_scale(self, scale: float) -> None:
        """Live strength (diffusers' `set_ip_adapter_scale` for one scale): 1 = full, 0 = no effect."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise IPAdapterError(f"ip_adapter_scale: must be a finite number (1 = full strength, 0 = off), "
                                 f"got {scale!r}")
        self._scale = float(scale)
        self.scale_tensor.fill_(self._scale)

    @torch.no_grad()
    def encode_image(self, image: str | Path | Any) -> Tensor:
        """A style image (file path, PIL image or uint8 HxWx3 RGB array) -> its embedding (1, 1, *embed)
        on the device in the model dtype. Changes nothing (safe in a background thread)."""
        pil = open_image(image)
        pixels = self.image_processor(images=pil, return_tensors="pt").pixel_values
        return self._encode_pixels(pixels, uncond=False)

    def set_image(self, image: str | Path | Any | Tensor | None) -> None:
        """Replace the style image: a path / PIL image / array is encoded first (IPAdapterError, nothing
        changed, when it is no image), a tensor from `encode_image` is taken as is, None = no image
        (the image rows get the unconditional embeds). Written in place into `image_embeds`."""
        if image is None:
            embeds, label = self.uncond_embeds, None
        elif isinstance(image, Tensor):
            if tuple(image.shape) != tuple(self.image_embeds.shape):
                raise IPAdapterError(f"ip_adapter_image: embeddings of shape {tuple(image.shape)} given, this "
                                     f"IP-Adapter needs {tuple(self.image_embeds.shape)} (from encode_image)")
            embeds, label = image, "embeddings"
        else:
            embeds = self.encode_image(image)
            label = str(image) if isinstance(image, (str, Path)) else type(image).__name__
        self.image_embeds.copy_(embeds)
        self.image_source = label
        self.image_version += 1

    # ------------------------------------------------------------------ on / off the UNet
    def attach(self) -> None:
        """Put the adapter on the components' UNet (between frames). Idempotent."""
        from diffusers.models.embeddings import MultiIPAdapterImageProjection

        if self.attached:
            return
        unet = self.components.unet
        if getattr(unet, "encoder_hid_proj", None) is not None:
            raise IPAdapterError(f"IP-Adapter {self.source!r}: the UNet already has an image or text projection "
                                 "(another IP-Adapter attached?); detach it first")
        old = dict(unet.attn_processors)
        unet.set_attn_processor({**old, **self.processors})
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([self.projection])
        self._saved = (old, unet.config.encoder_hid_dim_type)
        unet.config.encoder_hid_dim_type = "ip_image_proj"  # the attribute diffusers' UNet forward reads

    def detach(self) -> None:
        """Restore the UNet exactly as it was before `attach()`. Idempotent."""
        if self._saved is None:
            return
        unet = self.components.unet
        old, hid_type = self._saved
        unet.encoder_hid_proj = None  # first: a Plus resampler's attention layers count as the UNet's processors
        unet.set_attn_processor(dict(old))
        unet.config.encoder_hid_dim_type = hid_type
        self._saved = None

    # ------------------------------------------------------------------ internals
    def _zero_pixels(self) -> Tensor:
        size = int(self.image_encoder.config.image_size)
        return torch.zeros(1, 3, size, size)

    @torch.no_grad()
    def _encode_pixels(self, pixels: Tensor, *, uncond: bool) -> Tensor:
        encoder = self.image_encoder
        param = next(encoder.parameters())
        if uncond and self.kind == "plain":  # diffusers: zeros for the CFG rows of a plain adapter
            width = int(encoder.config.projection_dim)
            return torch.zeros(1, 1, width, device=self.components.device, dtype=self.components.dtype)
        pixels = pixels.to(device=param.device, dtype=param.dtype)
        if self.kind == "plain":
            out = encoder(pixels).image_embeds
        else:  # Plus / full-face: the penultimate hidden states (for the CFG rows: of a zero image)
            out = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return out[None].to(device=self.components.device, dtype=self.components.dtype)


@dataclass(frozen=True)
class _Located:
    """Where the weights are (a local file) and the default image encoder: a local folder, or a hub
    repository with a subfolder."""

    weights: Path
    encoder: str
    encoder_subfolder: str | None = None  # set only for a hub repository


def build_ip_adapter(state: Mapping[str, Mapping[str, Tensor]], image_encoder, components: Components, *,
                     source: str, scale: float = 1.0) -> IPAdapter:
    """An IPAdapter from weights in the original layout ({"image_proj": {...}, "ip_adapter": {...}})
    and a CLIPVisionModelWithProjection, checked against the loaded UNet; nothing is attached.
    (`load_ip_adapter` reads both from files; the benchmark passes random ones.)"""
    from transformers import CLIPImageProcessor

    kind = check_fits(source, state, components)
    problem = encoder_width_problem(kind, state["image_proj"], image_encoder.config)
    if problem:
        raise IPAdapterError(f"IP-Adapter {source!r}: {problem}; give the image encoder it was trained with "
                             "(ip-adapter_sdxl_vit-h / ip-adapter-plus_sdxl_vit-h take the ViT-H encoder "
                             "h94/IP-Adapter/models/image_encoder)")
    unet, device, dtype = components.unet, components.device, components.dtype
    image_proj = {k: v.detach().to("cpu", torch.float32) for k, v in state["image_proj"].items()}
    projection = unet._convert_ip_adapter_image_proj_to_diffusers(image_proj, low_cpu_mem_usage=False)
    projection = projection.to(device=device, dtype=dtype).eval().requires_grad_(False)
    scale_tensor = torch.zeros((), device=device, dtype=torch.float32)
    ip, processors = state["ip_adapter"], {}
    for key_id, (name, attn) in zip(_layer_keys(ip), cross_attention_layers(unet)):
        proc = IPAttnProcessor(int(attn.inner_dim), int(unet.config.cross_attention_dim), scale_tensor)
        proc.load_state_dict({"to_k_ip.0.weight": ip[f"{key_id}.to_k_ip.weight"],
                              "to_v_ip.0.weight": ip[f"{key_id}.to_v_ip.weight"]})
        processors[name] = proc.to(device=device, dtype=dtype).eval().requires_grad_(False)
    size = int(image_encoder.config.image_size)
    image_encoder = image_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
    adapter = IPAdapter(source, kind, components, projection, processors, scale_tensor, image_encoder,
                        CLIPImageProcessor(size=size, crop_size=size))  # what diffusers' load_ip_adapter makes
    adapter.set_scale(scale)
    return adapter


def load_ip_adapter(source: str, components: Components, *, weight_name: str | None = None,
                    image_encoder: str | None = None, scale: float = 1.0,
                    local_files_only: bool = False) -> IPAdapter:
    """Load an IP-Adapter for the loaded model, not yet attached (safe in a background thread).

    `source`: a .safetensors / .bin file; a folder (with `weight_name` relative to it, or holding
    exactly one weight file); a hub id with `weight_name` ("h94/IP-Adapter",
    weight_name="models/ip-adapter_sd15.safetensors") or in one string
    ("h94/IP-Adapter/models/ip-adapter_sd15.safetensors", what the `ip_adapter` setting holds).
    `image_encoder`: a folder or hub id (optionally with a subfolder: "h94/IP-Adapter/models/
    image_encoder") of a CLIPVisionModelWithProjection; default: `image_encoder/` beside the weight
    file (the h94 layout). The adapter's family is checked before its image encoder is loaded."""
    where = _locate(source, weight_name, local_files_only)
    state = read_ip_adapter_state(source, where.weights)
    check_fits(source, state, components)  # before the (large) image encoder is read
    encoder = _load_image_encoder(image_encoder, where, local_files_only)
    return build_ip_adapter(state, encoder, components, source=source, scale=scale)


def nest_state(flat: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Flat original-layout keys ("image_proj.proj.weight", "ip_adapter.1.to_k_ip.weight", ...) ->
    {"image_proj": {...}, "ip_adapter": {...}} (other keys are dropped)."""
    state: dict[str, dict[str, Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in state:
            state[head][rest] = value
    return state


def read_ip_adapter_state(source: str, path: Path) -> dict[str, dict[str, Tensor]]:
    """{"image_proj": {...}, "ip_adapter": {...}} from an original-layout .safetensors or .bin file."""
    from safetensors.torch import load_file

    try:
        if path.suffix.lower() == ".safetensors":
            state = nest_state(load_file(str(path), device="cpu"))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise IPAdapterError(f"IP-Adapter {source!r}: {path} is not a readable {path.suffix} file "
                             f"({type(exc).__name__}: {detail}); it may be damaged or only partly downloaded") from exc
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise IPAdapterError(f"IP-Adapter {source!r}: {path.name} holds no IP-Adapter weights (keys 'image_proj.*' "
                             f"and 'ip_adapter.*'); give an IP-Adapter file such as {EXAMPLE_SOURCE}")
    return state


def _split_hub(name: str) -> tuple[str, str | None] | None:
    """"owner/repo[/sub/path]" -> (repo id, sub path or None); None when `name` is no hub reference."""
    parts = name.strip("/").split("/")
    if len(parts) < 2 or not _HUB_REPO.match("/".join(parts[:2])) or name.startswith((".", "/", "~")) or "\\" in name:
        return None
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def _locate(source: str, weight_name: str | None, local_only: bool) -> _Located:
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise IPAdapterError(f"IP-Adapter {source!r}: a weight file must be .safetensors or .bin")
        return _Located(path, str(path.parent / "image_encoder"))
    if path.is_dir():
        if weight_name:
            file = path / weight_name
            if not file.is_file():
                raise IPAdapterError(f"IP-Adapter {source!r}: the folder has no {weight_name!r}")
        else:
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES)
            if len(found) != 1:
                names = ", ".join(p.name for p in found) or "no .safetensors / .bin file"
                raise IPAdapterError(f"IP-Adapter {source!r}: say which weight file to use (weight_name, or the "
                                     f"file's path as the source); the folder holds {names}")
            file = found[0]
        return _Located(file, str(file.parent / "image_encoder"))
    hub = _split_hub(source)
    if hub is None or (hub[1] is None and not weight_name and source.lower().endswith(WEIGHT_SUFFIXES)):
        raise IPAdapterError(f"IP-Adapter {source!r}: no such file or folder. Check the path (absolute: "
                             f"{path.absolute()}), or give a Hugging Face file such as {EXAMPLE_SOURCE}")
    repo, inner = hub
    filename = weight_name or inner
    if not filename or not filename.lower().endswith(WEIGHT_SUFFIXES):
        raise IPAdapterError(f"IP-Adapter {source!r}: name the weight file in the repository, e.g. {EXAMPLE_SOURCE}")
    from huggingface_hub import hf_hub_download

    try:
        file = Path(hf_hub_download(repo, filename, local_files_only=local_only))
    except Exception as exc:
        raise IPAdapterError(str(_explain("IP-Adapter", f"{repo}/{filename}", exc, local_only))) from exc
    folder = str(Path(filename).parent.as_posix())
    return _Located(file, repo, f"{folder}/image_encoder" if folder not in ("", ".") else "image_encoder")


def _load_image_encoder(spec: str | None, where: _Located, local_only: bool):
    from transformers import CLIPVisionModelWithProjection

    if spec is None:
        name, subfolder = where.encoder, where.encoder_subfolder
        if subfolder is None and not Path(name).is_dir():
            raise IPAdapterError(f"IP-Adapter image encoder {name!r}: no such folder. Put the CLIP image encoder "
                                 "there (the h94 layout: image_encoder/ beside the weight file) or give image_encoder="
                                 "<folder or hub id>, e.g. h94/IP-Adapter/models/image_encoder")
    elif Path(spec).expanduser().is_dir():
        name, subfolder = str(Path(spec).expanduser()), None
    else:
        hub = _split_hub(spec)
        if hub is None:
            raise IPAdapterError(f"IP-Adapter image encoder {spec!r}: no such folder; give a folder or hub id of a "
                                 "CLIP image encoder, e.g. h94/IP-Adapter/models/image_encoder")
        name, subfolder = hub
    label = name if subfolder is None else f"{name}/{subfolder}"
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        return CLIPVisionModelWithProjection.from_pretrained(name, local_files_only=local_only, **kwargs)
    except Exception as exc:
        if Path(name).is_dir():
            raise IPAdapterError(f"IP-Adapter image encoder {label!r}: not a CLIP image encoder folder "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
        raise IPAdapterError(str(_explain("IP-Adapter image encoder", label, exc, local_only))) from exc


# --------------------------------------------------------------------------- style images
def open_image(image: str | Path | Any):
    """A file path, PIL image or uint8 HxWx3 RGB array -> an RGB PIL image; IPAdapterError naming the
    thing when it is none (missing file, a file that is not an image, a wrong array)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise IPAdapterError(f"ip_adapter_image: an array must be uint8 HxWx3 RGB, got {image.dtype} "
                                 f"{tuple(image.shape)}")
        return Image.fromarray(image, "RGB")
    if not isinstance(image, (str, Path)):
        raise IPAdapterError(f"ip_adapter_image: give an image file path, got {type(image).__name__}")
    path = Path(image).expanduser()
    if not path.is_file():
        raise IPAdapterError(f"ip_adapter_image {str(image)!r}: no such file (absolute: {path.absolute()})")
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")  # decodes the whole file: a truncated image fails here
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise IPAdapterError(f"ip_adapter_image {str(image)!r}: not an image file that can be read (PNG, JPEG, WebP, "
                             f"BMP, TIFF, ...): {type(exc).__name__}: {detail}") from exc
