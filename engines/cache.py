"""On-disk engine cache: keys that change whenever a built artifact would be stale.

A TensorRT engine depends on the weights (model hash, fused LoRAs), the shape profile, the
TensorRT version, the GPU's compute capability and the precision; the key covers all of them,
so changing any one builds a new engine instead of silently reusing an old one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .profiles import ShapeProfile

_SAMPLE = 64  # values hashed from each end of every parameter


def model_fingerprint(module: Any) -> str:
    """A short hash of a module's config and weights, fast enough for every start.

    Hashes every parameter's name, shape and dtype, its sum, and its first and last values:
    a changed checkpoint or a fused LoRA changes it, without reading gigabytes through SHA-256.
    """
    import torch

    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        digest.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    digest.update(type(module).__name__.encode())
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
            if flat.numel() == 0:
                continue
            ends = torch.cat([flat[:_SAMPLE], flat[-_SAMPLE:]]).float().cpu()
            digest.update(ends.numpy().tobytes())
            digest.update(repr(round(float(flat.float().sum()), 3)).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class EngineKey:
    """Everything a built engine depends on."""

    part: str  # "unet" | "vae_encoder" | "vae_decoder"
    model_hash: str
    lora_set: tuple[tuple[str, float], ...]
    profile: ShapeProfile
    precision: str
    backend_version: str  # e.g. "tensorrt-10.7.0"
    compute_capability: str  # e.g. "9.0"

    def digest(self) -> str:
        payload = asdict(self)
        payload["lora_set"] = sorted([name, float(scale)] for name, scale in self.lora_set)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def folder_name(self) -> str:
        """Readable and unique: the part, the model, the sizes, then the full digest."""
        p = self.profile
        sides = f"{p.min_side}-{p.max_side}px-opt{p.opt_height}x{p.opt_width}-b{p.min_batch}-{p.max_batch}"
        return f"{self.part}--{self.model_hash[:8]}--{sides}--{self.backend_version}--sm{self.compute_capability.replace('.', '')}--{self.digest()}"


def engine_dir(cache_dir: Path, key: EngineKey) -> Path:
    return Path(cache_dir) / "tensorrt" / key.folder_name()


def lora_set(loras: Iterable[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Canonical order, so the same set in another order gives the same key."""
    return tuple(sorted((str(n), float(s)) for n, s in loras))


def use_compile_cache(cache_dir: Path) -> Path:
    """Point Inductor's and Triton's on-disk caches under the engine cache (second start is fast).

    Must run before the first torch.compile of the process; an existing user setting wins.
    """
    root = Path(cache_dir) / "inductor"
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    if dynamo_precompile():
        import torch._dynamo.config as dc

        dc.caching_precompile = True  # experimental: Dynamo's traced bytecode and guards cached on disk too
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


PRECOMPILE_ENV = "DREAMCAM_DYNAMO_PRECOMPILE"


def dynamo_precompile() -> bool:
    """Opt-in (`DREAMCAM_DYNAMO_PRECOMPILE=1`): torch's experimental "caching precompile", which also
    keeps Dynamo's own tracing of each module (seconds per start that no other cache removes)."""
    return os.environ.get(PRECOMPILE_ENV, "").strip() in ("1", "true", "yes")


def save_compile_artifacts() -> str:
    """After a compile with `dynamo_precompile()`: write Dynamo's entries to its on-disk cache (torch
    does that only from `torch.compiler.save_cache_artifacts`). '' or why it failed (never raises)."""
    if not dynamo_precompile():
        return ""
    try:
        import torch

        torch.compiler.save_cache_artifacts()
    except Exception as exc:  # noqa: BLE001 - an experimental cache: the engine runs without it
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return ""
