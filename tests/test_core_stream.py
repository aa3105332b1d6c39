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


def test_a_live_size_change_reallocates_and_the_next_frame_has_the_new_size(components):
    stream = StreamDiffusion(components, StreamConfig(width=64, height=64, t_index_list=(20, 40), prompt="a cat"))
    stream(_frame(0))
    key = stream.shape_key
    stream.update(width=96, height=48)
    assert stream.shape_key != key and stream.buffer.shape[-2:] == (6, 12)
    assert stream(_frame(1)).shape == (48, 96, 3)


def test_a_shape_the_modules_cannot_serve_is_refused_naming_the_field_and_nothing_changes(components):
    """`StepModules.fits` (a TensorRT engine's profile): asked before a change of size or UNet batch;
    the refusal names the field that asked for the shape, and the stream keeps its shapes and settings."""
    import dataclasses

    from dreamcam.core.modules import eager_modules

    asked = []

    def fits(height: int, width: int, unet_batch: int) -> str:
        asked.append((height, width, unet_batch))
        return "" if max(height, width) <= 64 and unet_batch == 1 else "outside this engine's profile"

    modules = dataclasses.replace(eager_modules(components), fits=fits)
    config = StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none", prompt="a cat")
    stream = StreamDiffusion(components, config, modules=modules)
    stream(_frame(0))
    key = stream.shape_key
    for changes, field in (({"width": 96}, "width"), ({"height": 72, "prompt": "a dog"}, "height"),
                           ({"t_index_list": (20, 40)}, "t_index_list"), ({"t_index_list": None, "steps": 2}, "steps"),
                           ({"cfg_type": "full"}, "cfg_type"), ({"width": 48, "cfg_type": "full"}, "cfg_type")):
        with pytest.raises(ValueError, match=f"^{field}: outside this engine's profile"):
            stream.update(**changes)
        assert stream.shape_key == key and stream.config == config
    assert (64, 48, 1) in asked and (64, 48, 2) in asked  # the size alone fits, with the batch it does not
    asked.clear()
    stream.update(prompt="a dog", guidance_scale=1.5)
    assert asked == []  # no shape change: nothing to ask
    stream.update(width=48)
    assert stream(_frame(1)).shape == (64, 48, 3)
