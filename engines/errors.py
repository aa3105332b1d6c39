"""Why an engine could not be made; the factory turns these into a fallback with a reason."""

from __future__ import annotations


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (missing library, no GPU, failed build, out of memory).

    `reason` is one short, user-facing sentence; the factory reports it and tries the next engine.
    """

    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(f"{engine} engine unavailable: {reason}")
        self.engine = engine
        self.reason = reason


def describe_failure(exc: BaseException) -> str:
    """One line saying what went wrong, with a hint for the common GPU failures."""
    if isinstance(exc, EngineUnavailable):
        return exc.reason
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _is_oom(exc):
        return f"out of GPU memory ({text[:160]}); close other GPU programs or use a smaller size"
    if isinstance(exc, ImportError):
        return f"missing library: {text[:200]}"
    return f"{type(exc).__name__}: {text[:240]}"


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return "out of memory" in str(exc).lower()
