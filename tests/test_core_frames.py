"""Frames in and out: resize policies, 16:9 sizes, kinds and devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core import frames as fr
from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion


def _tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame)[None]


def test_crop_fills_and_cuts_the_centre():
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    frame[:, 50:150] = 255  # a white centre band exactly as wide as the square crop
    out = fr.fit(_tensor(frame), 64, 64, "crop")[0]
    assert out.shape == (64, 64, 3) and out.float().mean() > 250


def test_letterbox_keeps_everything_and_pads_black():
    frame = np.full((90, 160, 3), 200, dtype=np.uint8)  # 16:9 into a square
    out = fr.fit(_tensor(frame), 64, 64, "letterbox")[0].numpy()
    assert out.shape == (64, 64, 3)
    assert out[0].max() == 0 and out[-1].max() == 0  # bars top and bottom
    assert abs(int(out[32, 32, 0]) - 200) <= 1 and out[32, 0, 0] > 150  # image spans the full width


def test_stretch_ignores_the_aspect_ratio():
    frame = np.zeros((40, 160, 3), dtype=np.uint8)
    frame[:, :80] = 255
    out = fr.fit(_tensor(frame), 64, 64, "stretch")[0].numpy()
    assert out[:, :30].min() > 250 and out[:, 34:].max() < 5


def test_same_size_is_untouched_and_uint8_roundtrip_is_exact():
    frame = np.random.default_rng(0).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    t = torch.from_numpy(frame)
    assert fr.fit(t, 48, 32, "crop") is t
    assert torch.equal(fr.from_unit(fr.to_unit(t, torch.float32)), t)


def test_alpha_channel_is_dropped_and_kinds_are_kept():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    t = fr.to_tensor(rgba, torch.device("cpu"))
    assert t.shape == (1, 8, 8, 3)
    assert isinstance(fr.like_input(t, rgba), np.ndarray) and fr.like_input(t, rgba).shape == (8, 8, 3)


@pytest.mark.parametrize("policy, width, height", [("crop", 768, 432), ("letterbox", 128, 72), ("stretch", 128, 72)])
def test_sixteen_by_nine_stream(tiny_model_dir, policy, width, height):
    comp = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))
    stream = StreamDiffusion(comp, StreamConfig(width=width, height=height, t_index_list=(30,), cfg_type="none",
                                                resize=policy))
    webcam = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = stream(webcam)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


def test_size_must_be_a_multiple_of_eight():
    with pytest.raises(ValueError, match="width"):
        StreamConfig(width=100)
    with pytest.raises(ValueError, match="resize"):
        StreamConfig(resize="zoom")



def test_the_host_copy_of_the_upload_path_copies_rgb_and_rgba_frames_exactly():
    rng = np.random.default_rng(0)
    dst = torch.empty(1, 24, 40, 3, dtype=torch.uint8)
    for channels in (3, 4):
        frame = rng.integers(0, 256, (1, 24, 40, channels), dtype=np.uint8)
        fr.host_copy(dst, torch.from_numpy(frame)[..., :3])  # RGBA: a strided view
        assert torch.equal(dst, torch.from_numpy(frame[..., :3].copy()))
