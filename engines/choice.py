"""Which engine `auto` runs on this machine, and why: a pure decision over what was detected.

`choose_engine(Detected(...))` is the whole rule (tested on the CPU with explicit inputs);
`detect(device)` fills `Detected` from this machine. `create_engine("auto", ...)` and
`dreamcam doctor` both use it, so the doctor's line is the app's choice.
- TensorRT where it imports and works (a builder can be created on the GPU);
- else compiled (torch.compile / Inductor) where Triton is usable: it imports and the GPU is
  compute capability 7.0 or newer (on Windows Triton comes from the `triton-windows` package);
- else eager, whose per-frame step still runs as a CUDA graph;
- off CUDA always eager (the others are for NVIDIA GPUs).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

TRITON_MIN_CAPABILITY = (7, 0)  # Triton's oldest supported NVIDIA GPUs (Volta)


def triton_install_hint(platform: str = sys.platform) -> str:
    if platform.startswith("win"):
        return "`pip install triton-windows` (the Windows build of Triton, in the version its README pairs with your torch)"
    return "`pip install triton` (a CUDA build of torch on Linux brings it)"


@dataclass(frozen=True)
class Detected:
    """What this machine has, as found by `detect` (or given by a test)."""

    cuda: bool  # the model runs on a CUDA GPU
    platform: str = sys.platform
    tensorrt_problem: str | None = "not checked"  # None: TensorRT imports and works, else why not
    triton_problem: str | None = "not checked"  # None: Triton is usable, else why not


@dataclass(frozen=True)
class Choice:
    engine: str  # "tensorrt" | "compiled" | "eager"
    reason: str  # one line: why this one
    skipped: tuple[tuple[str, str], ...] = ()  # (engine, why not) for the faster ones not taken

    def line(self) -> str:
        return f"{self.engine}: {self.reason}"


def choose_engine(found: Detected) -> Choice:
    if not found.cuda:
        why = "the model is on the CPU; compiled and TensorRT engines are for CUDA GPUs"
        return Choice("eager", why, (("tensorrt", why), ("compiled", why)))
    if found.tensorrt_problem is None:
        return Choice("tensorrt", "TensorRT imports and works on this GPU (the fastest engine)")
    skipped = [("tensorrt", found.tensorrt_problem)]
    if found.triton_problem is None:
        return Choice("compiled", f"TensorRT is not usable ({found.tensorrt_problem}); Triton works, so torch.compile "
                      "runs (the first start compiles for a minute or more, later starts load the cache)",
                      tuple(skipped))
    skipped.append(("compiled", f"Triton is not usable ({found.triton_problem}); install it with "
                    f"{triton_install_hint(found.platform)}"))
    return Choice("eager", f"neither TensorRT ({found.tensorrt_problem}) nor Triton ({found.triton_problem}) is "
                  f"usable; the eager engine still runs each frame as a CUDA graph. For the compiled engine: "
                  f"{triton_install_hint(found.platform)}", tuple(skipped))


def tensorrt_problem() -> str | None:
    """None when TensorRT imports and can create a builder (it finds its libraries and the GPU)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - ImportError, or a DLL/shared-library error on import
        return f"the tensorrt package does not import ({type(exc).__name__}: {str(exc)[:120]})"
    try:
        if trt.Builder(trt.Logger(trt.Logger.ERROR)) is None:
            return "TensorRT could not create a builder on this GPU"
    except Exception as exc:  # noqa: BLE001
        return f"TensorRT {getattr(trt, '__version__', '?')} does not start ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def triton_problem(capability: tuple[int, int] | None) -> str | None:
    """None when Triton imports and the GPU (compute `capability`) is new enough for it."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"the triton package does not import ({type(exc).__name__})"
    if capability is not None and tuple(capability) < TRITON_MIN_CAPABILITY:
        return (f"the GPU is compute capability {capability[0]}.{capability[1]}; Triton needs "
                f"{TRITON_MIN_CAPABILITY[0]}.{TRITON_MIN_CAPABILITY[1]} or newer")
    return None


def detect(device: str = "cuda") -> Detected:
    """This machine, for a model on `device` (only what the choice needs; TensorRT is imported)."""
    import torch

    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if not cuda:
        return Detected(cuda=False)
    capability = torch.cuda.get_device_capability(torch.device(device))
    return Detected(cuda=True, tensorrt_problem=tensorrt_problem(), triton_problem=triton_problem(capability))
