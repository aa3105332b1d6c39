"""How long each part of the last engine start took, per model and shape, kept in the engine cache.

`start-times.json` in the engine cache folder maps a `start_key` (engine, model architecture,
shapes, precision, torch version, GPU) to the seconds each probed part took the last time
(`encode`, `unet`, `decode`). The first start of a shape shows what it is compiling with the
last time as its estimate (`progress_line`); a start from a warm cache overwrites it with its own,
shorter, times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

FILE_NAME = "start-times.json"
log = logging.getLogger(__name__)


def start_key(engine: str, components: Any, geometry: Any, dtype: str) -> str:
    """Readable and exact: a part of the key per thing a compiled artifact depends on (not the weights:
    the kernels compiled for one set of weights serve any other of the same architecture)."""
    import torch

    unet = components.unet
    config = json.dumps(dict(getattr(unet, "config", {})), sort_keys=True, default=str)
    arch = hashlib.sha256((type(unet).__name__ + config).encode()).hexdigest()[:12]
    device = next(unet.parameters()).device
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    g = geometry
    return (f"{engine}|{getattr(components, 'family', '?')}-{arch}|{g.height}x{g.width}-b{g.unet_batch}-f{g.frame_batch}"
            f"|{dtype}|torch-{torch.__version__}|{gpu}")


class StartRecord:
    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / FILE_NAME

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def last(self, key: str, part: str) -> float | None:
        value = self._read().get(key, {}).get(part)
        return float(value) if isinstance(value, (int, float)) else None

    def save(self, key: str, part: str, seconds: float) -> None:
        """Best effort: a read-only or full cache folder only loses the estimate."""
        data = self._read()
        data.setdefault(key, {})[part] = round(seconds, 2)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:
            log.debug("could not write %s: %s", self.path, exc)


def progress_line(engine: str, what: str, last: float | None) -> str:
    """E.g. "compiled engine: compiling the UNet (512x512, batch 1), about 48 s (the last start)"."""
    estimate = (f"about {last:.0f} s (the last start of this shape)" if last is not None
                else "the first time for this shape: a minute or more; later starts load it from the cache")
    return f"{engine} engine: compiling {what}, {estimate}"
