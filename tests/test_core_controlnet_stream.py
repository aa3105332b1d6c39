"""The stream's ControlNet API (set_controlnets, set_controlnet_scales, set_control_image), the
`depth` preprocessor (a tiny random Depth Anything against transformers) and the `external` one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

from dreamcam.core import frames as fr
from dreamcam.core.config import StreamConfig
from dreamcam.core.controlnet import ControlNetError, ControlNetStack, ControlNetUnit, load_controlnet
from dreamcam.core.depth import Depth, DepthModelError, depth_image, load_depth_model
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.preprocess import Canny, External, Passthrough, make_preprocessor
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_controlnet, make_tiny_depth_model, make_tiny_model

SIZE = 64


@pytest.fixture(scope="module")
def comp(tiny_sd15_dir):
    return load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd"), local_files_only=True))


@pytest.fixture(scope="module")
def net(comp, tiny_sd15_dir, tmp_path_factory):
    return load_controlnet(str(make_tiny_controlnet(tiny_sd15_dir, tmp_path_factory.mktemp("cn") / "net", seed=3)),
                           comp, local_files_only=True)


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory):
    return make_tiny_depth_model(tmp_path_factory.mktemp("depth") / "tiny-depth-anything")


def frame(seed: int = 5, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / SIZE
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1)
    img = np.clip(127.5 * (base + 1) + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    img[size[0] // 4: size[0] * 3 // 4, size[1] // 4: size[1] * 3 // 4] = 255
    return img


def config(**kw) -> StreamConfig:
    base = dict(width=SIZE, height=SIZE, t_index_list=(25,), cfg_type="self", guidance_scale=1.2, seed=3,
                prompt="the cat")
    return StreamConfig(**{**base, **kw})


def images_of(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb)[None].permute(0, 3, 1, 2).float() / 127.5 - 1


# --------------------------------------------------------------------------- depth
def test_depth_equals_transformers_forward_on_the_same_input(depth_dir):
    from transformers import AutoModelForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    depth = load_depth_model(str(depth_dir), local_files_only=True)
    image = frame(size=(64, 80))
    x = images_of(image)
    # the model input: the size rule of transformers' DPT processor (keep aspect, multiple of 14) and its
    # normalisation; only the bicubic kernels differ (PIL's a=-0.5 on uint8 vs torch's a=-0.75: at most a
    # few grey levels, 0.15 here is 9 grey levels after the std of 0.225)
    pixel_values = DPTImageProcessorPil.from_pretrained(depth_dir)(images=image, return_tensors="pt").pixel_values
    ours = depth.model_input(x)
    assert ours.shape == pixel_values.shape == (1, 3, 42, 56)
    assert (ours - pixel_values).abs().mean() < 0.01 and (ours - pixel_values).abs().max() < 0.15
    # the map: transformers' own model (loaded again, separately) on the same input, normalised per image
    model = AutoModelForDepthEstimation.from_pretrained(str(depth_dir), local_files_only=True).eval()
    with torch.no_grad():
        pred = model(pixel_values=ours).predicted_depth.numpy()[0]
        got = depth(x)
    want = (pred - pred.min()) / (pred.max() - pred.min())
    assert got.shape == (1, 3, 64, 80) and got.dtype == torch.float32
    small = torch.nn.functional.interpolate(got[:, :1], size=(42, 56), mode="bilinear", align_corners=False,
                                            antialias=True)[0, 0].numpy()
    assert np.corrcoef(small.ravel(), want.ravel())[0, 1] > 0.95  # the same map, resized there and back (measured 0.975)
    exact = depth_image(torch.from_numpy(pred)[None], (42, 56), torch.float32)[0, 0].numpy()
    np.testing.assert_allclose(exact, want, atol=1e-6)  # same size: exactly transformers' map, min-max scaled
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0 and torch.equal(got[:, 0], got[:, 2])


def test_depth_rows_are_independent_and_a_flat_map_is_black(depth_dir):
    depth = load_depth_model(str(depth_dir), local_files_only=True)
    a, b = images_of(frame(1)), images_of(frame(2))
    with torch.no_grad():
        both = depth(torch.cat([a, b]))
        torch.testing.assert_close(both[1:], depth(b), atol=1e-5, rtol=0)
    flat = depth_image(torch.full((2, 7, 9), 3.5), (SIZE, SIZE), torch.float16)
    assert flat.shape == (2, 3, SIZE, SIZE) and flat.dtype == torch.float16
    assert float(flat.abs().max()) == 0.0  # no division by a zero range


def test_depth_model_that_is_not_there_is_one_clear_error(tmp_path):
    with pytest.raises(DepthModelError) as info:
        load_depth_model("/no/such/depth-model", local_files_only=True)
    assert "/no/such/depth-model" in str(info.value) and "no such file or folder" in str(info.value)
    with pytest.raises(DepthModelError) as info:  # offline, not in the cache
        load_depth_model("someone/no-such-depth-model", local_files_only=True)
    message = str(info.value)
    assert "someone/no-such-depth-model" in message and "huggingface-cli download" in message
    assert "depth_model" in message and len(message.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DepthModelError, match="cannot load the depth model"):
        load_depth_model(str(empty), local_files_only=True)


def test_make_preprocessor_loads_depth_and_external(depth_dir):
    assert isinstance(make_preprocessor("depth", source=str(depth_dir), local_files_only=True), Depth)
    assert isinstance(make_preprocessor("external"), External)
    with pytest.raises(DepthModelError):
        make_preprocessor("depth", source="/no/such/depth", local_files_only=True)


def test_a_depth_controlnet_steers_the_stream(comp, net, depth_dir):
    depth = load_depth_model(str(depth_dir), local_files_only=True)
    stream = StreamDiffusion(comp, config())
    plain = stream(frame()).astype(int)
    stream.set_controlnets(ControlNetStack([ControlNetUnit("depth", net, depth, 1.0)]))
    controlled = stream(frame()).astype(int)
    assert np.abs(controlled - plain).mean() > 0.5


# --------------------------------------------------------------------------- the stream's API
def test_set_controlnets_swaps_between_frames_and_shape_key_follows_the_structure(comp, net):
    stream = StreamDiffusion(comp, config())
    plain_key = stream.shape_key
    assert len(stream.controlnets) == 0 and stream.structure_key == ((),)
    a = ControlNetStack([ControlNetUnit("canny", net, Canny(50, 120), 0.8)])
    stream.set_controlnets(a)
    key_a = stream.shape_key
    assert key_a != plain_key
    stream.set_controlnet_scales({"canny": 0.3})
    assert stream.shape_key == key_a  # live scale: same structure, same graph
    b = ControlNetStack([ControlNetUnit("canny", net, Canny(50, 120), 0.8)])  # same names, other tensors
    stream.set_controlnets(b)
    assert stream.shape_key not in (key_a, plain_key)
    stream.set_controlnets(None)
    assert stream.shape_key == plain_key and len(stream.controlnets) == 0
    canny = a.units[0].preprocessor
    low_ptr = canny.low.data_ptr()
    a.set_canny_thresholds(30.0, 90.0)  # the canny_low / canny_high settings: in place
    assert (float(canny.low), float(canny.high)) == (30.0, 90.0) and canny.low.data_ptr() == low_ptr
    with pytest.raises(ValueError, match="canny thresholds"):
        a.set_canny_thresholds(90.0, 30.0)
    assert (float(canny.low), float(canny.high)) == (30.0, 90.0)
    stream.update(width=SIZE + 8)  # reallocation: a new key even if the size comes back
    stream.update(width=SIZE)
    assert stream.shape_key != plain_key


def test_a_failed_set_controlnets_leaves_everything_as_it_was(comp, net, tmp_path):
    stream = StreamDiffusion(comp, config())
    good = ControlNetStack([ControlNetUnit("canny", net, Canny(50, 120), 0.8)])
    stream.set_controlnets(good)
    before, key = stream(frame()), stream.shape_key
    sd21 = make_tiny_model(tmp_path / "sd21", "sd21", with_taesd=False)
    foreign = ControlNetModel.from_pretrained(make_tiny_controlnet(sd21, tmp_path / "net21"))  # no check on load
    bad = ControlNetStack([ControlNetUnit("ok", net, Canny(), 1.0), ControlNetUnit("other", foreign, Canny(), 1.0)])
    with pytest.raises(ControlNetError) as info:
        stream.set_controlnets(bad)
    assert "'other'" in str(info.value) and "SD 2.1" in str(info.value) and "loaded model is SD 1.5" in str(info.value)
    with pytest.raises(ControlNetError, match="expected a ControlNetStack"):
        stream.set_controlnets([ControlNetUnit("x", net, Canny(), 1.0)])
    with pytest.raises(ControlNetError, match="no ControlNet of that name"):
        stream.set_controlnet_scales({"canny": 0.5, "nope": 1.0})
    assert stream.controlnets is good and stream.shape_key == key and good.scales == {"canny": 0.8}
    assert np.array_equal(stream(frame()), before)


def test_external_control_image_is_fitted_written_in_place_and_not_the_frame(comp, net):
    image = frame(8)
    big = np.ascontiguousarray(np.repeat(np.repeat(image, 2, 0), 2, 1)[:, 16:])  # another size and aspect
    fitted = fr.fit(torch.from_numpy(big)[None], SIZE, SIZE, "crop")[0].numpy()
    streams = []
    for control in (big, fitted):
        stream = StreamDiffusion(comp, config())
        stream.set_controlnets(ControlNetStack([ControlNetUnit("ext", net, External(), 0.9)]))
        stream.set_control_image("ext", control)
        streams.append(stream)
    key, other = streams[0].shape_key, frame(9)
    got = streams[0](other)
    np.testing.assert_array_equal(got, streams[1](other))  # fitted like the stream's frames (crop)
    streams[0].set_control_image("ext", frame(3))
    assert streams[0].shape_key == key  # a new control image is an in-place write, not a new structure
    assert np.abs(streams[0](other).astype(int) - got.astype(int)).mean() > 0.2
    plain = StreamDiffusion(comp, config())(other)
    assert np.abs(got.astype(int) - plain.astype(int)).mean() > 0.5
    with pytest.raises(ControlNetError, match="not external"):
        passthrough = StreamDiffusion(comp, config())
        passthrough.set_controlnets(ControlNetStack([ControlNetUnit("pass", net, Passthrough(), 0.9)]))
        passthrough.set_control_image("pass", image)
    with pytest.raises(ControlNetError, match="no ControlNet of that name"):
        streams[0].set_control_image("nope", image)
    with pytest.raises(ValueError, match="frame"):
        streams[0].set_control_image("ext", image.astype(np.float32))


def test_external_equals_passthrough_on_the_frame(comp, net):
    image = frame(4)
    ext = StreamDiffusion(comp, config())
    ext.set_controlnets(ControlNetStack([ControlNetUnit("ext", net, External(), 0.9)]))
    ext.set_control_image("ext", image)
    ref = StreamDiffusion(comp, config())
    ref.set_controlnets(ControlNetStack([ControlNetUnit("pass", net, Passthrough(), 0.9)]))
    np.testing.assert_array_equal(ext(image), ref(image))


def test_external_works_for_txt2img(comp, net):
    cfg = config(mode="txt2img", t_index_list=(0, 25), cfg_type="none")
    plain = StreamDiffusion(comp, cfg)
    stream = StreamDiffusion(comp, cfg)
    stream.set_controlnets(ControlNetStack([ControlNetUnit("ext", net, External(), 1.0)]))
    black = stream().astype(int)  # no image yet: black
    stream.set_control_image("ext", frame(6))
    lit = [stream().astype(int) for _ in range(2)]
    base = [plain().astype(int) for _ in range(3)]
    assert np.abs(lit[1] - base[2]).mean() > 0.5 and np.abs(lit[1] - black).mean() > 0.5
