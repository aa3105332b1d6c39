"""Modules compiled ahead of time (AOTInductor): a later start loads them instead of tracing them.

A compiled start spends seconds in Dynamo's tracing of each module in every new process, which no
torch.compile cache removes (docs/engines.md, "Start time"). `AotModule` serves one of the core's
module calls (the UNet call, encode, decode) from an AOTInductor package per input signature, kept
under the engine cache (`aot/<part>--<key>.pt2`): built with `torch.export` + AOTInductor at the
first call of that signature, loaded in milliseconds at every later start. A package holds no
weights: the module's own parameters are handed to it by reference (`load_constants(...,
user_managed=True)`), so a weight changed in place is seen and the model is not copied to disk.

Only the module as it was when the engine was built is served this way. Once its structure changes
(a LoRA's adapter layers, an IP-Adapter's attention processors), a signature that cannot be
exported, or a package that does not load, the call goes to `fallback` (the torch.compile'd call):
slower to start, never wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Hashable

import torch

from .background import signature

log = logging.getLogger(__name__)
Call = Callable[..., torch.Tensor]
FORMAT = 1  # bump when what a package holds or how it is keyed changes


class _Exported(torch.nn.Module):
    """The call as a module for torch.export: `module` registered (its parameters are the package's
    constants by their names here), the call itself not."""

    def __init__(self, call: Call, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self._call = call

    def forward(self, *args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        return self._call(*args, **named)


def structure(module: torch.nn.Module) -> Hashable:
    """What export bakes in besides the weights: each submodule's name and type, and the attention
    processors' types (replaced by an IP-Adapter without a new submodule name)."""
    processors = getattr(module, "attn_processors", None)
    kinds = tuple(sorted((k, type(v).__name__) for k, v in processors.items())) if isinstance(processors, dict) else ()
    return tuple((name, type(m).__name__) for name, m in module.named_modules()), kinds


def _architecture(module: torch.nn.Module) -> str:
    """The layer sizes and each tensor's dtype and layout: the package is compiled for those (not the values)."""
    tensors = [(name, str(t.dtype), tuple(t.shape), t.stride()) for name, t in
               (*module.named_parameters(), *module.named_buffers())]
    return hashlib.sha256((repr(module) + repr(tensors)).encode()).hexdigest()[:16]


def _device_name(args: tuple, named: dict) -> str:
    tensor = next((a for a in (*args, *named.values()) if isinstance(a, torch.Tensor)), None)
    if tensor is None or tensor.device.type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(tensor.device)
    return f"{torch.cuda.get_device_name(tensor.device)} sm{major}{minor}"


class AotModule:
    def __init__(self, part: str, call: Call, module: torch.nn.Module, folder: Path, fallback: Call,
                 *, options: dict[str, Any] | None = None) -> None:
        self.part, self.folder = part, Path(folder)
        self.fallback = fallback
        self.options = dict(options or {})
        self._exported = _Exported(call, module)
        self._structure = structure(module)
        self._architecture = _architecture(module)
        self._runners: dict[Hashable, Any] = {}
        self._failed: dict[Hashable, str] = {}
        self.built = 0  # packages made by this process (the rest were loaded from the cache)

    def __call__(self, *args: Any, **named: Any) -> torch.Tensor:
        if structure(self._exported.module) != self._structure:
            return self.fallback(*args, **named)
        sig = signature(args, named)
        runner = self._runners.get(sig)
        if runner is None and sig not in self._failed:
            runner = self._runner(sig, args, named)
        if runner is None:
            return self.fallback(*args, **named)
        return runner(*args, **named)

    def key(self, sig: Hashable, args: tuple, named: dict) -> str:
        payload = {"format": FORMAT, "torch": torch.__version__, "part": self.part, "architecture": self._architecture,
                   "structure": repr(self._structure), "signature": repr(sig), "device": _device_name(args, named),
                   "options": sorted((k, repr(v)) for k, v in self.options.items())}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def package_path(self, sig: Hashable, args: tuple, named: dict) -> Path:
        return self.folder / f"{self.part}--{self.key(sig, args, named)}.pt2"

    def _runner(self, sig: Hashable, args: tuple, named: dict) -> Any:
        path = self.package_path(sig, args, named)
        try:
            if not path.is_file():
                self._build(path, args, named)
                self.built += 1
            runner = self._load(path)
        except Exception as exc:  # noqa: BLE001 - the torch.compile'd call serves this signature instead
            self._failed[sig] = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("ahead-of-time %s package for %s failed (torch.compile serves it): %s", self.part,
                        [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)], self._failed[sig])
            return None
        self._runners[sig] = runner
        return runner

    def _build(self, path: Path, args: tuple, named: dict) -> None:
        with torch.no_grad():
            program = torch.export.export(self._exported, tuple(args), dict(named), strict=False)
            configs = {"aot_inductor.package_constants_in_so": False, **self.options}
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
            os.close(fd)
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=tmp, inductor_configs=configs)
                os.replace(tmp, path)  # a start that stops mid-build leaves no half package under the key
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def _load(self, path: Path) -> Any:
        # single-threaded: no model-container locking or event waits, which a CUDA graph capture refuses
        # ("operation not permitted when stream is capturing", H200 run 10); one thread calls a runner at a time
        runner = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)
        tensors = self._exported.state_dict(keep_vars=True)
        wanted = list(runner.get_constant_fqns())
        missing = [name for name in wanted if name not in tensors]
        if missing:
            raise KeyError(f"the package wants tensors the module does not have: {missing[:3]}")
        runner.load_constants({name: tensors[name] for name in wanted}, check_full_update=True, user_managed=True)
        return runner
