"""The `depth` ControlNet preprocessor: a transformers depth model (Depth Anything, DPT) in torch ops.

`load_depth_model(source)` loads `AutoModelForDepthEstimation` from a hub id or a folder and reads
the input geometry and normalisation of its `preprocessor_config.json` (transformers' DPT image
processor: `size`, `keep_aspect_ratio`, `ensure_multiple_of`, `image_mean`, `image_std`).
`Depth(model, settings)` is the preprocessor: the fitted frames (B, 3, H, W) in [-1, 1] -> [0, 1]
-> bicubic resize to the model's input size (F.interpolate, antialiased when shrinking; the size is a Python function of the
frame shape, fixed per capture) -> (x - mean) / std -> the model's `predicted_depth` (relative
inverse depth: near is large, as the MiDaS maps depth ControlNets were trained on) -> normalised
per image to [0, 1] ((d - min) / (max - min), a flat map gives 0) -> bilinear resize back to H x W
-> 3 channels. All on the device, no host sync: capturable in the step's CUDA graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .loading import ModelLoadError, _check_source, _explain, _offline

Tensor = torch.Tensor
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
_FIX = "point depth_model at a hub id such as " + DEFAULT_DEPTH_MODEL + " or a folder saved with save_pretrained"


class DepthModelError(ModelLoadError, ValueError):
    """The depth model could not be loaded; the message names it and the fix."""


@dataclass(frozen=True)
class DepthInput:
    """How the model wants its input (from transformers' DPT image processor config)."""

    height: int = 518
    width: int = 518
    keep_aspect_ratio: bool = True
    multiple: int = 14
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_processor(cls, data: dict) -> "DepthInput":
        size = data.get("size") or {}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        return cls(height=int(size.get("height", 518)), width=int(size.get("width", 518)),
                   keep_aspect_ratio=bool(data.get("keep_aspect_ratio", False)),
                   multiple=int(data.get("ensure_multiple_of", 1)) or 1,
                   mean=tuple(data.get("image_mean", IMAGENET_MEAN)), std=tuple(data.get("image_std", IMAGENET_STD)))

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The model input size for frames of height x width (DPTImageProcessor's rule: with
        keep_aspect_ratio scale both sides by the factor closer to 1, then round each side to a
        multiple of `multiple`)."""
        sh, sw = self.height / height, self.width / width
        if self.keep_aspect_ratio:
            sh = sw = sw if abs(1 - sw) < abs(1 - sh) else sh
        return _multiple(sh * height, self.multiple), _multiple(sw * width, self.multiple)


def _multiple(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _processor_config(source: str, kind: str, local_only: bool) -> dict | None:
    if kind == "dir":
        path = Path(source).expanduser() / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(source, "preprocessor_config.json", local_files_only=local_only)).read_text())
    except EntryNotFoundError:
        return None


def load_depth_model(source: str = DEFAULT_DEPTH_MODEL, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, local_files_only: bool = False,
                     input_side: int | None = None) -> "Depth":
    """The `depth` preprocessor with the model of `source` (hub id or folder) on `device`;
    `input_side` overrides the processor's input size (e.g. 392 instead of Depth Anything's 518:
    fewer ViT tokens, a coarser map). Raises DepthModelError (one line naming the model and the
    fix) when it is missing or broken."""
    from transformers import AutoModelForDepthEstimation

    try:
        kind = _check_source(source, "depth model")
    except ModelLoadError as exc:
        raise DepthModelError(str(exc)) from exc
    if kind == "file":
        raise DepthModelError(f"cannot load the depth model {source!r}: a single file is not enough; {_FIX}")
    local_only = local_files_only or _offline()
    path = str(Path(source).expanduser()) if kind == "dir" else source
    try:
        model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=local_only)
        processor = _processor_config(path, kind, local_only)
    except Exception as exc:  # noqa: BLE001 - every failure is one message naming the model
        if kind == "hub":
            raise DepthModelError(f"{_explain('depth model', source, exc, local_only)}") from exc
        raise DepthModelError(f"cannot load the depth model {source!r}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}; {_FIX}") from exc
    patch = int(getattr(model.config, "patch_size", 14) or 14)
    settings = DepthInput.from_processor(processor) if processor is not None else DepthInput(multiple=patch)
    if input_side is not None:
        settings = replace(settings, height=int(input_side), width=int(input_side))
    return Depth(model.to(device=device, dtype=dtype).eval().requires_grad_(False), settings)


class Depth:
    """The depth preprocessor around a loaded transformers depth model."""

    name = "depth"

    def __init__(self, model, settings: DepthInput = DepthInput()) -> None:
        self.model = model
        self.settings = settings
        param = next(model.parameters())
        self.dtype = param.dtype
        self.mean = torch.tensor(settings.mean, device=param.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(settings.std, device=param.device, dtype=torch.float32).view(1, 3, 1, 1)

    def model_input(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> the normalised (B, 3, h, w) the model takes, in its dtype."""
        h, w = self.settings.size_for(*images.shape[-2:])
        x = (images.float() + 1.0) * 0.5
        shrinking = h < x.shape[-2] or w < x.shape[-1]  # antialiased, as PIL's resize (the processor's) is
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=shrinking)
        x = x.clamp(0.0, 1.0)  # no bicubic overshoot at hard edges (PIL resizes uint8: it clips too)
        return ((x - self.mean) / self.std).to(self.dtype)

    def __call__(self, images: Tensor) -> Tensor:
        depth = self.model(pixel_values=self.model_input(images)).predicted_depth
        return depth_image(depth, images.shape[-2:], images.dtype)


def depth_image(depth: Tensor, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """(B, h, w) predicted depth -> (B, 3, H, W) in [0, 1]: per-image min-max, resized to `size`."""
    d = depth.float().unsqueeze(1) if depth.dim() == 3 else depth.float()
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    hi = d.amax(dim=(1, 2, 3), keepdim=True)
    d = (d - lo) / (hi - lo).clamp_min(1e-6)
    d = F.interpolate(d, size=tuple(size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return d.expand(-1, 3, -1, -1).to(dtype).contiguous()
