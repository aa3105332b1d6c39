"""The start's progress: each compiled part announced with the time it took at the last start of the
same shapes (kept in the engine cache), and the probe's grad mode that the stream's step shares."""

from __future__ import annotations

import torch

from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.engines import EngineConfig, Geometry
from dreamcam.engines.eager import make_eager
from dreamcam.engines.factory import probe
from dreamcam.engines.start_record import FILE_NAME, StartRecord, progress_line, start_key


def test_the_second_probe_of_the_same_shapes_announces_the_first_ones_times(tiny_model_dir, tmp_path):
    comps = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))
    config = EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path)
    modules = make_eager(comps, config)
    first: list[str] = []
    probe(modules, comps, config, engine="compiled", progress=first.append)
    assert [line.split(" (")[0] for line in first] == [
        "compiled engine: compiling the image encoder", "compiled engine: compiling the UNet",
        "compiled engine: compiling the image decoder"]
    assert all("the first time for this shape" in line for line in first)
    assert (tmp_path / FILE_NAME).is_file()
    second: list[str] = []
    probe(modules, comps, config, engine="compiled", progress=second.append)
    assert all("(the last start of this shape)" in line and "about " in line for line in second)
    other = EngineConfig(geometry=Geometry(128, 64), cache_dir=tmp_path)  # another shape: no estimate
    third: list[str] = []
    probe(modules, comps, other, engine="compiled", progress=third.append)
    assert all("the first time for this shape" in line for line in third)


def test_the_record_is_per_key_and_survives_a_damaged_file(tmp_path):
    record = StartRecord(tmp_path)
    assert record.last("k", "unet") is None
    record.save("k", "unet", 41.6)
    assert StartRecord(tmp_path).last("k", "unet") == 41.6 and record.last("other", "unet") is None
    (tmp_path / FILE_NAME).write_text("{not json")
    assert record.last("k", "unet") is None  # only the estimate is lost
    record.save("k", "unet", 3.0)
    assert record.last("k", "unet") == 3.0
    assert progress_line("compiled", "the UNet (512x512, batch 1)", 41.6) == (
        "compiled engine: compiling the UNet (512x512, batch 1), about 42 s (the last start of this shape)")


def test_the_key_names_engine_family_shape_precision_and_torch(tiny_model_dir):
    comps = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))
    key = start_key("compiled", comps, Geometry(512, 768, unet_batch=2), "fp16")
    assert key.startswith("compiled|sd21-") and "|512x768-b2-f1|fp16|torch-" in key and key.endswith("|cpu")


def test_the_probe_runs_under_no_grad_like_the_streams_step(tiny_model_dir, tmp_path):
    """Dynamo guards on dispatch keys: inference-mode probe tensors made every module recompile at the first frame."""
    comps = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))
    seen: list[tuple[bool, bool]] = []
    modules = make_eager(comps, EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path))
    encode = modules.encode

    def spy(images):
        seen.append((torch.is_inference_mode_enabled(), images.is_inference()))
        return encode(images)

    modules.encode = spy
    probe(modules, comps, EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path))
    assert seen == [(False, False)]
