"""Several LoRAs on the UNet at once, with weights that change live without reloading anything.

Each LoRA (a hub id, a local folder or a single .safetensors file, in diffusers, PEFT or kohya
format) becomes one peft adapter of the UNet through diffusers' own loader
(`lora_state_dict` + `UNet2DConditionModel.load_lora_adapter`); every adapter stays active at peft
scale 1 (its own alpha / rank). The live weight w of an adapter is applied by rewriting its
`lora_B` weights in place as w * B (the original B is kept): peft computes
base(x) + scaling * B(A(x)), so this equals diffusers' `set_adapters(names, weights)`, yet it is
only a `copy_` into existing parameters: a captured CUDA graph or a compiled UNet (which read the
parameters at run time) stays valid. Loading or removing a LoRA changes the UNet's modules
(`structure_key` changes): engines must recapture or recompile then.

A LoRA is checked against the loaded UNet before anything is applied: every layer it adapts must
exist with matching shapes; otherwise one `LoraError` names the file and the LoRA's model family.
LCM-LoRA is not handled here: `loading.ModelSpec(lcm_lora=...)` fuses it at load time.
Only the UNet part of a LoRA is applied; text-encoder parts are skipped (logged).

Fusing (`fuse()` / `unfuse()`): every adapted layer's base weight becomes W0 + sum_i w_i s_i B_i A_i,
in place (peft's merge; W0 is kept on the device, so `unfuse()` restores it exactly and repeated
weight changes never accumulate rounding), and the adapters run no matmuls per frame. A weight
change while fused re-folds in place (one B A product per layer and adapter), so a captured graph
stays valid; adding or removing LoRAs unfuses first and fuses the new set again.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .loading import (FAMILY_CROSS_ATTENTION, FAMILY_LABELS, Components, ModelLoadError, _check_source, _explain,
                      source_name)

log = logging.getLogger(__name__)
Tensor = torch.Tensor
_TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.")


class LoraError(ModelLoadError, ValueError):
    """A LoRA could not be applied; the message names the LoRA and the fix. A ModelLoadError (a load
    that failed) and a ValueError (a live setting the stream rejects, the settings kept)."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA: `source` = hub id, folder or .safetensors file; `weight` its live strength;
    `name` identifies it for weight changes (default: derived from the source)."""

    source: str
    weight: float = 1.0
    name: str = ""

    @property
    def adapter_name(self) -> str:
        return self.name or source_name(self.source) or "lora"


@dataclass(frozen=True)
class LoraFile:
    """A LoRA read from its source and checked against the UNet, not applied yet (`LoraStack.read`):
    reading (slow: files, the hub) can happen away from the frame loop, `apply(files=...)` then only
    puts it on the UNet."""

    source: str
    unet_state: dict
    alphas: dict | None
    family: str | None
    skipped: int  # text-encoder weights that are not applied


_loads = itertools.count(1)  # one number per adapter load: its parameters are new tensors


@dataclass
class _Adapter:
    spec: LoraSpec
    originals: list[tuple[Tensor, Tensor]]  # (lora_B parameter in the UNet, its loaded value)
    family: str | None
    load: int = 0


class LoraStack:
    """The LoRAs applied to `components.unet`. `apply(specs)` makes the set equal to `specs`
    (all or nothing); `set_weights({name: w})` only rewrites weights."""

    def __init__(self, components: Components, *, local_files_only: bool = False) -> None:
        self.c = components
        self.local_files_only = local_files_only
        self._adapters: dict[str, _Adapter] = {}
        self.loads = 0  # LoRA files read so far (weight changes read none)
        self._w0: dict[torch.nn.Module, Tensor] = {}  # fused: each adapted layer's base weight before fusing

    @property
    def fused(self) -> bool:
        return bool(self._w0)

    @property
    def weights(self) -> dict[str, float]:
        return {name: a.spec.weight for name, a in self._adapters.items()}

    @property
    def structure_key(self) -> tuple:
        """Changes exactly when adapters are added or removed (the UNet's modules change) or when
        they are fused or unfused (each layer computes something else): engines recapture then."""
        # the load number too: a LoRA removed and loaded again has new parameter tensors, so a graph
        # captured with the first load (and kept by the engine for its key) must not replay
        return (tuple((name, a.spec.source, a.load) for name, a in self._adapters.items())
                + (("fused",) if self.fused else ()))

    # ------------------------------------------------------------------ live weights
    def set_weights(self, weights: Mapping[str, float]) -> None:
        """New weights for loaded LoRAs by name. Raises LoraError (nothing changed) for an unknown
        name or a weight that is not a finite number."""
        for name, weight in weights.items():
            if name not in self._adapters:
                known = ", ".join(self._adapters) or "none loaded"
                raise LoraError(f"LoRA {name!r}: no LoRA of that name is loaded ({known})")
            _check_weight(name, weight)
        refuse = self.fused
        self.unfuse()
        for name, weight in weights.items():
            adapter = self._adapters[name]
            adapter.spec = LoraSpec(adapter.spec.source, float(weight), adapter.spec.name)
            _write_weight(adapter, float(weight))
        if refuse:
            self.fuse()

    # ------------------------------------------------------------------ fused weights
    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the LoRAs at their weights into the base weights, in place (no per-frame cost)."""
        if self.fused or not self._adapters:
            return
        for layer in _lora_layers(self.c.unet, self._adapters):
            self._w0[layer] = layer.get_base_layer().weight.detach().clone()
            layer.merge(adapter_names=[n for n in self._adapters if n in layer.lora_A])

    @torch.no_grad()
    def unfuse(self) -> None:
        """The base weights exactly as before `fuse()` (in place); the adapters run live again."""
        for layer, w0 in self._w0.items():
            layer.unmerge()
            layer.get_base_layer().weight.copy_(w0)
        self._w0 = {}

    # ------------------------------------------------------------------ the set of LoRAs
    def apply(self, specs: Sequence[LoraSpec], files: Mapping[str, LoraFile] | None = None) -> None:
        """Make the applied LoRAs exactly `specs`: new ones are loaded, missing ones removed, the
        weights written. `files`: LoRAs already read (`read`) by source; the others are read here.
        On any error nothing changes (LoRAs loaded by this call are removed again)."""
        wanted: dict[str, LoraSpec] = {}
        for spec in specs:
            name = spec.adapter_name
            if name in wanted:
                raise LoraError(f"LoRA {spec.source!r}: the name {name!r} is used twice; give each LoRA its own name")
            _check_weight(name, spec.weight)
            wanted[name] = spec
        new = [s for n, s in wanted.items() if n not in self._adapters or self._adapters[n].spec.source != s.source]
        refuse = self.fused
        self.unfuse()
        try:
            self._apply(wanted, new, files or {})
        finally:
            if refuse:
                self.fuse()

    def _apply(self, wanted: dict[str, LoraSpec], new: list[LoraSpec], files: Mapping[str, LoraFile]) -> None:
        loaded: list[str] = []
        try:
            for spec in new:
                if spec.adapter_name in self._adapters:  # same name, other file: load under a temporary name
                    raise LoraError(f"LoRA {spec.source!r}: the name {spec.adapter_name!r} is already used by "
                                    f"{self._adapters[spec.adapter_name].spec.source!r}; remove it first or rename")
                self._load(spec, files.get(spec.source))
                loaded.append(spec.adapter_name)
        except Exception:
            for name in loaded:
                self._remove(name)
            self._activate()
            raise
        for name in [n for n in self._adapters if n not in wanted]:
            self._remove(name)
        self._activate()
        self.set_weights({n: s.weight for n, s in wanted.items()})

    def clear(self) -> None:
        self.apply([])

    # ------------------------------------------------------------------ internals
    def read(self, source: str) -> LoraFile:
        """Read a LoRA and check that it fits this UNet, changing nothing (LoraError otherwise)."""
        state, alphas = self._read(source)
        unet_state = {k: v for k, v in state.items() if k.startswith("unet.")}
        skipped = [k for k in state if k.startswith(_TEXT_ENCODER_PREFIXES)]
        family = lora_family(state)
        if not unet_state:
            what = f"it looks like a {FAMILY_LABELS[family]} LoRA, but " if family else ""
            raise LoraError(f"LoRA {source!r}: {what}it has no UNet weights (keys 'unet.*' or 'lora_unet_*'); "
                            "give a LoRA trained for the UNet of this model")
        self._check_fits(source, unet_state, family)
        return LoraFile(source, unet_state, alphas, family, len(skipped))

    def _load(self, spec: LoraSpec, file: LoraFile | None = None) -> None:
        name, source = spec.adapter_name, spec.source
        file = file if file is not None and file.source == source else self.read(source)
        if file.skipped:
            log.warning("LoRA %r: its %d text-encoder weights are not applied (only the UNet part is)",
                        source, file.skipped)
        unet = self.c.unet
        try:
            unet.load_lora_adapter(dict(file.unet_state), prefix="unet", network_alphas=file.alphas,
                                   adapter_name=name, low_cpu_mem_usage=False)
        except Exception as exc:
            self._forget(name)
            raise LoraError(f"LoRA {source!r}: diffusers could not apply it ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]})") from exc
        originals = []
        for module in unet.modules():
            lora_b = getattr(module, "lora_B", None)
            if isinstance(lora_b, torch.nn.ModuleDict) and name in lora_b:
                for param in lora_b[name].parameters():
                    originals.append((param, param.detach().clone()))
        self._adapters[name] = _Adapter(spec, originals, file.family, next(_loads))
        self.loads += 1

    def _read(self, source: str) -> tuple[dict, dict | None]:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        path = Path(source).expanduser()
        if path.is_file() and path.suffix.lower() != ".safetensors":
            raise LoraError(f"LoRA {source!r}: a single-file LoRA must be a .safetensors file")
        try:
            kind = _check_source(source, "LoRA")
        except ModelLoadError as exc:  # a missing local path: named, never sent to the hub as an id
            raise LoraError(str(exc)) from exc
        loader = StableDiffusionXLPipeline if self.c.family == "sdxl" else StableDiffusionPipeline
        try:
            state, alphas = loader.lora_state_dict(str(path) if kind != "hub" else source,
                                                   local_files_only=self.local_files_only)
        except Exception as exc:
            if kind == "hub":
                raise LoraError(str(_explain("LoRA", source, exc, self.local_files_only))) from exc
            raise LoraError(f"LoRA {source!r}: not a readable LoRA ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); give a diffusers, PEFT or kohya LoRA "
                            ".safetensors file, or a folder holding one") from exc
        return state, alphas

    def _check_fits(self, source: str, unet_state: dict, family: str | None) -> None:
        """Every adapted layer must exist in this UNet with the LoRA's shapes."""
        inner = peft_unet_state(unet_state)
        modules = dict(self.c.unet.named_modules())
        problem = None
        for key, value in inner.items():
            for part, axis in ((".lora_A.", 1), (".lora_B.", 0)):
                if part not in key or not key.endswith(".weight"):
                    continue
                path = key.split(part)[0]
                layer = modules.get(path)
                problem = problem or _shape_problem(path, layer, value, axis)
        if problem is None:
            return
        model = FAMILY_LABELS.get(self.c.family, self.c.family)
        if family is not None and family != self.c.family:
            width = FAMILY_CROSS_ATTENTION[family]
            raise LoraError(f"LoRA {source!r}: it is an {FAMILY_LABELS[family]} LoRA (its cross-attention layers "
                            f"take {width}-wide text embeddings), but the loaded model is {model} "
                            f"({FAMILY_CROSS_ATTENTION[self.c.family]}); use a LoRA trained for {model}")
        raise LoraError(f"LoRA {source!r}: it does not fit the loaded {model} UNet ({problem}); "
                        f"use a LoRA trained for {model}")

    def _remove(self, name: str) -> None:
        self._adapters.pop(name, None)
        self._forget(name)

    def _forget(self, name: str) -> None:
        if name in (getattr(self.c.unet, "peft_config", None) or {}):
            self.c.unet.delete_adapters(name)

    def _activate(self) -> None:
        """Every loaded adapter active at peft weight 1 (the live weight lives in lora_B)."""
        names = list(self._adapters)
        if names:
            self.c.unet.set_adapters(names, [1.0] * len(names))


def _lora_layers(unet: torch.nn.Module, adapters) -> list:
    """The UNet's peft LoRA layers that hold at least one of `adapters`."""
    from peft.tuners.lora import LoraLayer

    return [m for m in unet.modules() if isinstance(m, LoraLayer) and any(n in m.lora_A for n in adapters)]


def _check_weight(name: str, weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise LoraError(f"LoRA {name!r}: weight must be a finite number (1 = full strength, 0 = off), got {weight!r}")


@torch.no_grad()
def _write_weight(adapter: _Adapter, weight: float) -> None:
    for param, original in adapter.originals:
        param.copy_(original * weight)


def _shape_problem(path: str, layer, value: Tensor, axis: int) -> str | None:
    """None when the LoRA factor `value` fits `layer` (A: its input side, B: its output side)."""
    if layer is None:
        return f"it adapts the layer {path!r}, which this UNet does not have"
    base = getattr(layer, "base_layer", layer)  # an already adapted layer
    if isinstance(base, torch.nn.Linear):
        size, dims = (base.in_features if axis == 1 else base.out_features), 2
    elif isinstance(base, torch.nn.Conv2d):
        size, dims = (base.in_channels if axis == 1 else base.out_channels), 4
    else:
        return f"it adapts {path!r}, a {type(base).__name__}, which takes no LoRA here"
    if value.ndim != dims or value.shape[axis] != size:
        side = "input" if axis == 1 else "output"
        return f"{path!r} has {size} {side} features, the LoRA factor has shape {tuple(value.shape)}"
    return None


def peft_unet_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The UNet part of a LoRA state dict (as diffusers' `lora_state_dict` returns it), without the
    'unet.' prefix, in PEFT key format ('<layer>.lora_A.weight', '<layer>.lora_B.weight')."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    inner = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    if inner and not any("lora_A" in k for k in inner):
        inner = convert_unet_state_dict_to_peft(inner)
    return inner


def lora_family(state: Mapping[str, Tensor]) -> str | None:
    """The model family a LoRA was trained for, from its keys and cross-attention widths (None:
    cannot tell, e.g. a LoRA without cross-attention layers)."""
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in state):
        return "sdxl"
    by_width = {width: family for family, width in FAMILY_CROSS_ATTENTION.items()}
    for key, value in peft_unet_state(state).items():
        if key.endswith((".attn2.to_k.lora_A.weight", ".attn2.to_v.lora_A.weight")) and value.ndim == 2:
            if value.shape[1] in by_width:
                return by_width[value.shape[1]]
    return None
