"""GPU: prompt/seed blends and temporal feedback inside the captured step (through the app's graph
driver): live value changes write in place and need no new capture; replays equal eager steps."""

from __future__ import annotations

import numpy as np
import pytest

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion

from gpu_helpers import GPU_ONLY

pytestmark = GPU_ONLY


@pytest.fixture(scope="module")
def comp(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"),
                                     device="cuda", dtype="float16", local_files_only=True))


def frames(count, size=64):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
    return [np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def test_blends_and_feedback_change_live_in_one_capture(comp):
    from dreamcam.engines.driver import StreamDriver

    config = StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none", prompt="the cat",
                          latent_feedback=0.25)
    eager, graphed = StreamDiffusion(comp, config), StreamDiffusion(comp, config)
    driver = StreamDriver(graphed)
    updates = {3: dict(latent_feedback=0.6, image_feedback=0.3),
               5: dict(prompt_blend="the cat : 0.3 | the sea : 0.7", blend_method="slerp"),
               7: dict(seed_blend="2:0.5, 9:0.5"),
               9: dict(latent_feedback=0.0, image_feedback=0.5)}
    captures = None
    for i, frame in enumerate(frames(12)):
        if i in updates:
            eager.update(**updates[i])
            driver.update(**updates[i])
        want = eager(frame)
        got = driver(frame)
        if i == 0:
            captures = driver.graphed.captures
            assert captures == 1 and driver.graph_status().error is None
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= 3 and diff.mean() < 0.1, (i, int(diff.max()))
    assert driver.graphed.captures == captures  # every change above was a value written in place
    driver.close()


def test_switching_feedback_on_recaptures_once_as_a_stateful_step(comp):
    from dreamcam.engines.driver import StreamDriver

    stream = StreamDiffusion(comp, StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none",
                                                prompt="the cat"))
    driver = StreamDriver(stream, 2)  # two frames in flight while the step is stateless
    clip = frames(6)
    driver(clip[0])
    assert driver.graph_status().lanes == 2
    driver.update(latent_feedback=0.5)  # now each frame reads the previous output: one lane
    driver(clip[1])
    assert driver.graph_status().lanes == 1 and driver.graphed.captures == 2
    driver.update(latent_feedback=0.7)
    for f in clip[2:]:
        driver(f)
    assert driver.graphed.captures == 2
    driver.close()
