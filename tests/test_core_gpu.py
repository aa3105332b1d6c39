"""GPU proof for the engine contract: the stream runs in fp16 on CUDA, keeps tensor kinds, and
`step_tensor` can be captured in ONE CUDA graph whose replays equal eager steps, also across
live updates that only `copy_` into the state (prompt, guidance, seed, t_index values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion

from gpu_helpers import GPU_ONLY

pytestmark = GPU_ONLY


@pytest.fixture(scope="module")
def comp(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"),
                                     device="cuda", dtype="float16", local_files_only=True))


def clip(count, size=64):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_fp16_cuda_stream_keeps_kinds(comp):
    stream = StreamDiffusion(comp, StreamConfig(width=64, height=64, t_index_list=(20, 40), cfg_type="self",
                                                prompt="the cat"))
    frames = clip(3)
    out = stream(frames[0])
    assert isinstance(out, np.ndarray) and out.shape == (64, 64, 3)
    gpu = stream(torch.from_numpy(frames[1]).cuda())
    assert gpu.is_cuda and gpu.dtype == torch.uint8 and gpu.shape == (64, 64, 3)


@pytest.mark.parametrize("cfg_type", ["none", "self", "full", "initialize"])
def test_step_tensor_replays_in_one_cuda_graph(comp, cfg_type):
    config = StreamConfig(width=64, height=64, t_index_list=(15, 30, 45), cfg_type=cfg_type, frame_buffer_size=2,
                          prompt="the cat", negative_prompt="an ant", guidance_scale=1.5)
    eager, graphed = StreamDiffusion(comp, config), StreamDiffusion(comp, config)
    frames = [torch.from_numpy(np.stack(pair)).cuda() for pair in zip(clip(8), clip(8)[::-1])]
    static_in = frames[0].clone()
    for s in (eager, graphed):
        s.prime(frames[0])
    # warm up on a side stream (allocator, cuDNN/cuBLAS handles), then restore the state and capture
    saved = {n: getattr(graphed, n).clone() for n in ("buffer", "stock")}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            graphed.step_tensor(static_in)
    torch.cuda.current_stream().wait_stream(side)
    for name, value in saved.items():
        getattr(graphed, name).copy_(value)
    graph = torch.cuda.CUDAGraph()
    key = graphed.shape_key
    with torch.cuda.graph(graph):
        static_out = graphed.step_tensor(static_in)
    updates = {3: dict(prompt="the sea", guidance_scale=2.0), 5: dict(seed=11, t_index_list=(10, 25, 40))}
    for i, frame in enumerate(frames):
        if i in updates:
            eager.update(**updates[i])
            graphed.update(**updates[i])
            assert graphed.shape_key == key  # same shape: the captured graph stays valid
        want = eager.step_tensor(frame)
        static_in.copy_(frame)
        graph.replay()
        diff = (static_out.int() - want.int()).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.05, (i, diff.max().item())
    torch.cuda.synchronize()


def test_host_frames_through_the_reused_pinned_buffer_equal_device_frames(comp):
    """numpy frames go through one reused pinned staging buffer; every frame must arrive whole
    (a frame overwritten while its copy is in flight would give another output)."""
    config = StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none", prompt="the cat",
                          similarity_threshold=None)
    host, device = StreamDiffusion(comp, config), StreamDiffusion(comp, config)
    for frame in clip(6):
        from_host = host(frame)
        from_device = device(torch.from_numpy(frame).cuda()).cpu().numpy()
        np.testing.assert_array_equal(from_host, from_device)
