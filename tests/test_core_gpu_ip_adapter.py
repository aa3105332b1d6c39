"""IP-Adapter in a captured CUDA graph (run with -m gpu on a CUDA machine): the graphed stream equals the
uncaptured one, and a live scale change or a new style image shows in the next replay with no recapture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.ip_adapter import load_ip_adapter
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_ip_adapter
from dreamcam.engines.driver import StreamDriver

from gpu_helpers import GPU_ONLY

pytestmark = GPU_ONLY


def _frames(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("cfg_type", ["none", "full"])
def test_ip_adapter_scale_and_image_change_live_in_a_cuda_graph(tiny_sd15_dir, tmp_path, cfg_type):
    comps = load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd"), device="cuda",
                                      dtype="float16", local_files_only=True))
    weights = make_tiny_ip_adapter(tiny_sd15_dir, tmp_path / "models" / "ip-adapter.safetensors", seed=1)
    adapter = load_ip_adapter(str(weights), comps, scale=0.6, local_files_only=True)
    frames = _frames()
    adapter.set_image(frames[1])
    config = StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type=cfg_type, guidance_scale=1.5, seed=3,
                          prompt="a lighthouse", negative_prompt="fog")
    plain = StreamDiffusion(comps, config)
    driver = StreamDriver(StreamDiffusion(comps, config))
    driver.set_ip_adapter(adapter)
    plain.set_ip_adapter(adapter)  # the same adapter on the same UNet: attach is idempotent
    try:
        outs = [(driver(frames[0]), plain(frames[0]))]
        captures = driver.graphed.captures
        adapter.set_scale(1.2)
        outs.append((driver(frames[0]), plain(frames[0])))
        adapter.set_image(frames[2])
        outs.append((driver(frames[0]), plain(frames[0])))
        adapter.set_scale(0.0)
        outs.append((driver(frames[0]), plain(frames[0])))
        assert driver.graphed.captures == captures == 1 and driver.graph_status().error is None
        for got, want in outs:
            assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 2
        assert np.abs(outs[1][0].astype(np.int16) - outs[0][0].astype(np.int16)).max() > 2  # the scale acted
        assert np.abs(outs[2][0].astype(np.int16) - outs[1][0].astype(np.int16)).max() > 2  # the image acted
        driver.set_ip_adapter(None)  # detached: a new structure, one more capture, the plain stream
        plain.set_ip_adapter(None)
        assert np.abs(driver(frames[0]).astype(np.int16) - plain(frames[0]).astype(np.int16)).max() <= 2
        assert driver.graphed.captures == 2
    finally:
        driver.close()
        adapter.detach()


@pytest.mark.parametrize("background_compile", [True, False])
def test_compiled_engine_takes_live_scale_and_image_without_recompiling(tiny_sd15_dir, tmp_path, background_compile):
    """The compiled engine (torch.compile, then one CUDA graph per frame) with an IP-Adapter: the eager
    engine's frames, and a scale change / new image neither recompiles nor recaptures. The adapter's
    new UNet inputs compile in the background (the default; the eager UNet serves meanwhile) or on
    the frame thread."""
    import torch._dynamo

    from dreamcam.engines import EngineConfig, Geometry, background, create_engine

    def comps():
        return load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd"), device="cuda",
                                         dtype="float16", local_files_only=True))

    weights = make_tiny_ip_adapter(tiny_sd15_dir, tmp_path / "models" / "ip-adapter.safetensors", seed=1)
    config = EngineConfig(geometry=Geometry(64, 64, unet_batch=1), cache_dir=tmp_path / "cache",
                          background_compile=background_compile)
    stream_config = StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none", seed=3,
                                 prompt="a lighthouse")
    frames = _frames()
    comps_e, comps_c = comps(), comps()
    eager, compiled = create_engine("eager", comps_e, config), create_engine("compiled", comps_c, config)
    assert compiled.name == "compiled", compiled.describe()
    adapters = [load_ip_adapter(str(weights), c, scale=0.6, local_files_only=True) for c in (comps_e, comps_c)]
    for adapter in adapters:
        adapter.set_image(frames[1])
    reference = StreamDiffusion(comps_e, stream_config, modules=eager.modules)
    reference.set_ip_adapter(adapters[0])
    driver = compiled.driver(StreamDiffusion(comps_c, stream_config, modules=compiled.modules))
    driver.set_ip_adapter(adapters[1])
    try:
        pairs = [(driver(frames[0]), reference(frames[0]))]
        if background_compile:  # that frame came from the eager UNet; the compiled step captures after
            assert background.wait_idle(600)
            pairs = [(driver(frames[0]), reference(frames[0]))]
        compiles, captures = torch._dynamo.utils.counters["frames"]["ok"], driver.graphed.captures
        for change in (lambda a: a.set_scale(1.2), lambda a: a.set_image(frames[2])):
            for adapter in adapters:
                change(adapter)
            pairs.append((driver(frames[0]), reference(frames[0])))
        assert torch._dynamo.utils.counters["frames"]["ok"] == compiles and driver.graphed.captures == captures == 1
        assert driver.graph_status().error is None
        for got, want in pairs:
            assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 3
        assert np.abs(pairs[2][0].astype(np.int16) - pairs[0][0].astype(np.int16)).max() > 3  # the changes acted
    finally:
        driver.close()
        for adapter in adapters:
            adapter.detach()
