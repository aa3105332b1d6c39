"""Model loading: a hub id, a local diffusers folder or a single checkpoint file -> `Components`.

Every failure a user can cause (wrong id, missing path, offline without a cache, unsupported
model) becomes a `ModelLoadError` whose message says what to do.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FAMILY_TINY_VAE = {"sd15": "madebyollin/taesd", "sd21": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
FAMILY_CROSS_ATTENTION = {"sd15": 768, "sd21": 1024, "sdxl": 2048}  # width of the text embeddings the UNet takes
FAMILY_LABELS = {"sd15": "SD 1.5", "sd21": "SD 2.1 / SD-Turbo", "sdxl": "SDXL"}
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
EXAMPLE_IDS = {"model": "stabilityai/sd-turbo", "tiny VAE": "madebyollin/taesd",
               "LoRA": "latent-consistency/lcm-lora-sdv1-5", "ControlNet": "lllyasviel/sd-controlnet-canny",
               "depth model": "depth-anything/Depth-Anything-V2-Small-hf",
               "IP-Adapter": "h94/IP-Adapter/models/ip-adapter_sd15.safetensors",
               "IP-Adapter image encoder": "h94/IP-Adapter/models/image_encoder"}
# how to do without a download, per kind of thing (the setting names are those of the app's config)
LOCAL_WAYS = {
    "model": "or point the model setting at a local diffusers folder or .safetensors file",
    "tiny VAE": ("or set tiny_vae to none (`--tiny-vae none`: the model's own VAE, slower) or to a local "
                 "tiny-VAE folder (`--tiny-vae FOLDER`)"),
    "LoRA": "or point lcm_lora at a local LoRA folder or .safetensors file",
    "IP-Adapter": "or point ip_adapter at a local .safetensors / .bin file (with image_encoder/ beside it)",
    "IP-Adapter image encoder": "or put the CLIP image encoder folder beside the IP-Adapter file as image_encoder/",
    "ControlNet": "or give the ControlNet as a local diffusers folder or .safetensors file",
    "depth model": "or set depth_model to a local folder saved with save_pretrained",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the thing and the fix."""


@dataclass
class ModelSpec:
    """What to load. `tiny_vae`: "auto" = TAESD of the family, None = the model's own VAE,
    else a hub id or folder of an AutoencoderTiny. `config`: for single-file checkpoints, a
    local diffusers folder (or hub id) holding the component configs, so no download is needed."""

    model: str
    tiny_vae: str | None = "auto"
    lcm_lora: str | None = None
    device: str = "cpu"
    dtype: torch.dtype | str = torch.float32
    local_files_only: bool = False
    config: str | None = None


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any  # an LCMScheduler built from the model's scheduler config
    family: str  # "sd15" | "sd21" | "sdxl"
    vae_kind: str  # "tiny" | "full"
    prediction_type: str  # "epsilon" | "v_prediction"
    text_encoder_2: Any = None  # SDXL only
    tokenizer_2: Any = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    source: str = ""
    force_zeros_for_empty_prompt: bool = False  # SDXL: an empty negative prompt means zero embeddings
    vae_dtype: torch.dtype | None = None  # the VAE's own precision; None = `dtype` (see vae_compute_dtype)

    def __post_init__(self) -> None:
        if self.vae_dtype is None:
            self.vae_dtype = self.dtype

    @property
    def scheduler_config(self) -> dict:
        return dict(self.scheduler.config)


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    if dtype not in table:
        raise ModelLoadError(f"dtype: must be one of float16, bfloat16, float32, got {dtype!r}")
    return table[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"device: {device!r} is not a device name (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device: {device!r} asked for, but this torch has no CUDA GPU; "
                             "install a CUDA build of torch or use device='cpu'")
    return dev


def vae_compute_dtype(family: str, vae_kind: str, vae_config: Any, dtype: torch.dtype) -> torch.dtype:
    """The precision the VAE runs in. The SDXL full VAE overflows in float16 (NaN, black frames); its
    config says `force_upcast`, and like diffusers' SDXL pipelines we then run it in float32. Only for
    SDXL: `force_upcast` is AutoencoderKL's default, so SD 1.5 / 2.1 configs carry it without needing
    it (diffusers' SD pipelines ignore it), and upcasting them would only cost time."""
    force_upcast = bool(dict(vae_config or {}).get("force_upcast", False))
    if family == "sdxl" and vae_kind == "full" and dtype == torch.float16 and force_upcast:
        return torch.float32
    return dtype


def detect_family(unet_config: Any) -> str:
    """SD 1.5, SD 2.1 (SD-Turbo) or SDXL from the UNet config."""
    cfg = dict(unet_config)
    if cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    dim = cfg.get("cross_attention_dim")
    if isinstance(dim, (list, tuple)):
        dim = dim[0]
    for family in ("sd15", "sd21"):
        if dim == FAMILY_CROSS_ATTENTION[family]:
            return family
    raise ModelLoadError(f"unsupported model: UNet cross_attention_dim {dim!r} is neither SD 1.5 (768), "
                         "SD 2.1 / SD-Turbo (1024) nor SDXL (text_time)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _explain(what: str, name: str, exc: BaseException, local_only: bool) -> ModelLoadError:
    """Turn a hub/OS error into an actionable message (`what`: "model", "tiny VAE", "LoRA", or
    "model part 'x' of")."""
    example = EXAMPLE_IDS.get(what, EXAMPLE_IDS["model"])
    local_way = LOCAL_WAYS.get(what, LOCAL_WAYS["model"])
    text = f"{type(exc).__name__}: {exc}"
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:  # diffusers wraps the hub's errors in an OSError
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    kind = " ".join(type(e).__name__ for e in chain)
    if "RepositoryNotFound" in kind or "404" in text and "Repository Not Found" in text:
        hint = (f"there is no model {name!r} on the Hugging Face Hub. Check the spelling "
                f"(e.g. {example}), or run `huggingface-cli login` if it is private.")
    elif local_only or _offline():
        hint = (f"{name!r} is not in the local Hugging Face cache and downloads are off "
                f"(offline / local_files_only). On a machine with internet run `huggingface-cli download {name}` "
                f"(the cache is ~/.cache/huggingface/hub, or HF_HOME), or unset HF_HUB_OFFLINE, {local_way}.")
    elif "LocalEntryNotFound" in kind or "Connection" in kind or "Timeout" in kind or "connect" in text.lower():
        hint = (f"could not reach the Hugging Face Hub to download {name!r}, and it is not in the local cache. "
                f"Check the network, or download it elsewhere with `huggingface-cli download {name}` "
                f"(cache: ~/.cache/huggingface/hub or HF_HOME) and set HF_HUB_OFFLINE=1, {local_way}.")
    else:
        hint = f"{text.splitlines()[0][:300]}"
    return ModelLoadError(f"cannot load the {what} {name!r}: {hint}")


def source_name(source: str) -> str:
    """A short identifier for a hub id, folder or file: its last path part without '.safetensors',
    other characters than letters, digits and '_' replaced by '_' (LoRA and ControlNet names)."""
    stem = Path(source.rstrip("/\\")).name
    stem = stem[: -len(".safetensors")] if stem.lower().endswith(".safetensors") else stem
    return re.sub(r"[^A-Za-z0-9_]", "_", stem)


def _is_pathlike(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or "\\" in name or name.lower().endswith(CHECKPOINT_SUFFIXES)
            or not _HUB_ID.match(name) or Path(name).exists())


def _check_source(name: str, what: str) -> str:
    """'dir', 'file' or 'hub'; raises for a missing local path."""
    path = Path(name).expanduser()
    if path.is_dir():
        return "dir"
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelLoadError(f"cannot load the {what} {name!r}: a single-file model must be a "
                                 f".safetensors or .ckpt checkpoint")
        return "file"
    if _is_pathlike(name):
        raise ModelLoadError(f"cannot load the {what} {name!r}: no such file or folder. Check the path "
                             f"(absolute: {path.absolute()}), or give a Hugging Face id such as "
                             f"{EXAMPLE_IDS.get(what, EXAMPLE_IDS['model'])}.")
    return "hub"


def load_components(spec: ModelSpec) -> Components:
    """Load UNet, VAE (tiny or full), text encoder(s), tokenizer(s) and an LCM scheduler."""
    device, dtype = resolve_device(spec.device), resolve_dtype(spec.dtype)
    kind = _check_source(spec.model, "model")
    local_only = spec.local_files_only or _offline()
    if kind == "file":
        parts = _load_single_file(spec, local_only)
    else:
        parts = _load_folder(spec.model, spec.tiny_vae is None, local_only, dtype)
    family = detect_family(parts["unet"].config)
    force_zeros = parts.pop("force_zeros_for_empty_prompt", None)
    force_zeros = family == "sdxl" and (True if force_zeros is None else bool(force_zeros))  # diffusers' default
    prediction_type = parts["scheduler"].config.get("prediction_type", "epsilon")
    if spec.tiny_vae is not None:
        parts["vae"] = _load_tiny_vae(_own_tiny_vae(spec, family), family, local_only, kind != "hub")
    if spec.lcm_lora:
        _fuse_lora(parts, family, spec.lcm_lora, local_only)
    vae_kind = "tiny" if spec.tiny_vae is not None else "full"
    vae_dtype = vae_compute_dtype(family, vae_kind, parts["vae"].config, dtype)
    if vae_dtype != dtype:
        log.info("the %s VAE asks for force_upcast: it runs in %s, the rest in %s", family, vae_dtype, dtype)
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = parts.get(key)
        if module is not None:
            module.to(device=device, dtype=vae_dtype if key == "vae" else dtype).eval().requires_grad_(False)
    from .schedule import make_lcm

    return Components(
        unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        scheduler=make_lcm(parts["scheduler"].config), family=family,
        vae_kind=vae_kind, prediction_type=prediction_type, vae_dtype=vae_dtype,
        text_encoder_2=parts.get("text_encoder_2"), tokenizer_2=parts.get("tokenizer_2"),
        device=device, dtype=dtype, source=spec.model, force_zeros_for_empty_prompt=force_zeros,
    )


def _model_index(name: str, local_only: bool) -> dict:
    path = Path(name).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ModelLoadError(f"cannot load the model {name!r}: the folder has no model_index.json, so it is not "
                                 "a diffusers pipeline folder (save one with pipe.save_pretrained(folder)).")
        return _read_index(index)
    from huggingface_hub import hf_hub_download

    try:
        index = Path(hf_hub_download(name, "model_index.json", local_files_only=local_only))
    except Exception as exc:  # hub raises many kinds; all become one clear message
        raise _explain("model", name, exc, local_only) from exc
    return _read_index(index)


def _read_index(index: Path) -> dict:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot load the model: {index} is damaged ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]}); save or download the model folder again.") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"cannot load the model: {index} is damaged (not a JSON object); "
                             "save or download the model folder again.")
    return data


def _load_folder(name: str, need_vae: bool, local_only: bool, dtype: torch.dtype | None = None) -> dict:
    """`dtype`: the UNet is read in it (diffusers otherwise reads fp16 weights into fp32 host memory, twice
    the bytes, then the stream casts them back: seconds at every start of an SDXL model)."""
    import diffusers
    import transformers

    index = _model_index(name, local_only)
    wanted = ["unet", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    if need_vae:
        wanted.append("vae")
    parts: dict = {"vae": None, "force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt")}
    source = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    for key in wanted:
        entry = index.get(key)
        if not entry or entry[0] is None or entry[1] is None:
            continue
        library = diffusers if entry[0] == "diffusers" else transformers
        cls = getattr(library, entry[1])
        kwargs = {"local_files_only": local_only, "subfolder": key}
        if key == "unet" and dtype is not None:
            kwargs["torch_dtype"] = dtype
        try:
            parts[key] = cls.from_pretrained(source, **kwargs)
        except Exception as exc:
            if Path(source).is_dir():  # a local folder: the hub and its cache are beside the point
                raise ModelLoadError(
                    f"cannot load the model part {key!r} of {name!r}: its files in {Path(source) / key} are missing "
                    f"or damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Save or download the "
                    "whole diffusers folder again.") from exc
            raise _explain(f"model part {key!r} of", name, exc, local_only) from exc
    for key in ("unet", "scheduler", "text_encoder", "tokenizer"):
        if key not in parts:
            raise ModelLoadError(f"cannot load the model {name!r}: it has no {key}; a Stable Diffusion pipeline "
                                 "(SD 1.5, SD 2.1 / SD-Turbo or SDXL) is needed.")
    return parts


def _checkpoint_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        if path.suffix.lower() == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the checkpoint {str(path)!r}: the file is not a readable "
                             f"{path.suffix} checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                             "it may be damaged or only partly downloaded.") from exc
    data = data.get("state_dict", data) if isinstance(data, dict) else {}
    return [k for k in data if isinstance(k, str)]


def _checkpoint_family(path: Path) -> str:
    keys = _checkpoint_keys(path)
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelLoadError(f"cannot load the checkpoint {str(path)!r}: it is not a Stable Diffusion checkpoint "
                             "(no UNet weights 'model.diffusion_model.*'); LoRA, VAE and embedding files are "
                             "not full models. Give a full SD 1.5 / SD 2.1 / SDXL checkpoint or a diffusers folder.")
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd21"
    return "sd15"


def _load_single_file(spec: ModelSpec, local_only: bool) -> dict:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(spec.model).expanduser()
    family = _checkpoint_family(path)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs: dict = {"local_files_only": local_only}
    if spec.config:
        kwargs["config"] = spec.config
    if family != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_single_file(str(path), **kwargs)
    except Exception as exc:
        if not spec.config:
            raise ModelLoadError(
                f"cannot load the checkpoint {spec.model!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}. "
                "A single-file checkpoint needs its component configs: set model_config (`--model-config FOLDER`) "
                "to a local diffusers folder of the same architecture (or to a hub id such as "
                "stable-diffusion-v1-5/stable-diffusion-v1-5 that is in your cache, see "
                "`huggingface-cli download <id> --include '*.json' '*.txt'`).") from exc
        raise ModelLoadError(f"cannot load the checkpoint {spec.model!r} with the configs of {spec.config!r}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}. Check that the config "
                             "folder is of the same architecture as the checkpoint.") from exc
    parts = {k: getattr(pipe, k, None) for k in
             ("unet", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}
    parts["force_zeros_for_empty_prompt"] = pipe.config.get("force_zeros_for_empty_prompt")
    if spec.tiny_vae is not None:
        parts["vae"] = None
    return parts


def _own_tiny_vae(spec: ModelSpec, family: str) -> str:
    """`spec.tiny_vae`, or for "auto" the model folder's own tiny VAE (`taesd/`; for SDXL
    `taesdxl/`, else `taesd/`) when it has one: a local folder then loads without any download."""
    if spec.tiny_vae != "auto":
        return spec.tiny_vae
    folder = Path(spec.model).expanduser()
    for name in ("taesdxl", "taesd") if family == "sdxl" else ("taesd",):
        own = folder / name
        if folder.is_dir() and (own / "config.json").is_file():
            log.info("using the model folder's own tiny VAE %s", own)
            return str(own)
    return "auto"


def _load_tiny_vae(name: str, family: str, local_only: bool, local_model: bool = False):
    """`local_model`: the model came from a folder or file, so a download of the default tiny
    VAE is what failed and the way out is named plainly."""
    from diffusers import AutoencoderTiny

    default = name == "auto"
    if default:
        name = FAMILY_TINY_VAE[family]
    kind = _check_source(name, "tiny VAE")
    if kind == "file":
        raise ModelLoadError(f"cannot load the tiny VAE {name!r}: give a diffusers folder or a hub id "
                             "(e.g. madebyollin/taesd), not a single file")
    try:
        return AutoencoderTiny.from_pretrained(str(Path(name).expanduser()) if kind == "dir" else name,
                                               local_files_only=local_only)
    except Exception as exc:
        if default and local_model and kind == "hub":
            raise ModelLoadError(
                f"cannot load the default tiny VAE {name!r}: the model is local but its tiny VAE is not, and it is "
                f"not in the Hugging Face cache or cannot be downloaded here. Set tiny_vae to none "
                f"(`--tiny-vae none`: the model's own VAE, slower) or to a local tiny-VAE folder "
                f"(`--tiny-vae FOLDER`), or put it in the model folder as {FAMILY_TINY_VAE[family].rsplit('/', 1)[1]}/, "
                f"or download it once with `huggingface-cli download {name}`.") from exc
        raise _explain("tiny VAE", name, exc, local_only) from exc


def _fuse_lora(parts: dict, family: str, lora: str, local_only: bool) -> None:
    """Load a LoRA (e.g. LCM-LoRA) into the UNet (and text encoder if it has weights there) and fuse it."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    names = ["unet", "text_encoder", "tokenizer", "scheduler", "vae"] + (
        ["text_encoder_2", "tokenizer_2"] if family == "sdxl" else [])
    kwargs = {k: parts.get(k) for k in names}
    if family != "sdxl":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if not Path(lora).expanduser().exists():
        _check_source(lora, "LoRA")  # a missing local path is named, not sent to the hub as an id
    pipe = cls(**kwargs)
    source = str(Path(lora).expanduser()) if Path(lora).expanduser().exists() else lora
    try:
        pipe.load_lora_weights(source, adapter_name="lcm", local_files_only=local_only)
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()
    except Exception as exc:
        raise _explain("LoRA", lora, exc, local_only) from exc
