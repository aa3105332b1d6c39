"""What every GPU test module shares: its marks (the `gpu` marker, and a skip where there is no CUDA
device, so a bare `pytest -m gpu` on a CPU machine says why nothing ran)."""

from __future__ import annotations

import pytest
import torch

GPU_ONLY = [pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with -m gpu there)")]
