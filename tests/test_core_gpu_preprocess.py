"""GPU proof that the ControlNet preprocessors are capturable: no host sync in an eager call, one
CUDA graph per preprocessor whose replays equal eager calls on new frames, and a live threshold
change that shows in the next replay without recapturing."""

from __future__ import annotations

import pytest
import torch

from dreamcam.core.preprocess import PREPROCESSORS, Canny, make_preprocessor

from gpu_helpers import GPU_ONLY

pytestmark = GPU_ONLY


def frames(count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        small = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1  # blocky images: real edges
        out.append(torch.nn.functional.interpolate(small, size=(64, 96), mode="nearest").half().cuda())
    return out


@pytest.mark.parametrize("name", sorted(PREPROCESSORS))
def test_preprocessor_replays_in_one_cuda_graph(name):
    pre = make_preprocessor(name, device="cuda")
    clip = frames(4)
    torch.cuda.set_sync_debug_mode("error")  # any host sync in an eager call raises
    try:
        pre(clip[0])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    static = clip[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            pre(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pre(static)
    for frame in clip[1:]:
        static.copy_(frame)
        graph.replay()
        torch.testing.assert_close(out, pre(frame), atol=1e-3, rtol=0)
    if isinstance(pre, Canny):
        before = out.clone()
        pre.set_thresholds(5, 15)
        graph.replay()
        torch.testing.assert_close(out, pre(static), atol=0, rtol=0)
        assert not torch.equal(out, before)
