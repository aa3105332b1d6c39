"""StreamDiffusion driver behaviour on a tiny model: shapes, kinds, sizes, warm-up, updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion


@pytest.fixture(scope="module")
def components(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def _frame(seed: int, h: int = 48, w: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("cfg_type", ["none", "self", "full", "initialize"])
def test_numpy_in_numpy_out_of_the_configured_size(components, cfg_type):
    stream = StreamDiffusion(components, StreamConfig(width=64, height=32, t_index_list=(20, 40), cfg_type=cfg_type))
    out = stream(_frame(0))
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (32, 64, 3)


def test_torch_in_torch_out(components):
    stream = StreamDiffusion(components, StreamConfig(width=64, height=64, t_index_list=(30,)))
    out = stream(torch.from_numpy(_frame(1)))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == (64, 64, 3)


def test_bad_frame_is_a_clear_error(components):
    stream = StreamDiffusion(components, StreamConfig(width=64, height=64, t_index_list=(30,)))
    with pytest.raises(ValueError, match="frame"):
        stream(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="frame"):
        stream(np.zeros((64, 64), dtype=np.uint8))
