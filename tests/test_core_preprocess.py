"""ControlNet preprocessors (core/preprocess.py): shapes and ranges, edges where they belong,
monotonic thresholds, agreement with OpenCV's Canny, and no graph breaks (capturable)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dreamcam.core.preprocess import PREPROCESSORS, Canny, Passthrough, SoftEdge, gaussian_kernel, make_preprocessor


def to_images(rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 (or BxHxWx3) -> (B,3,H,W) in [-1, 1], as the stream's step has them."""
    t = torch.from_numpy(np.ascontiguousarray(rgb))
    t = t[None] if t.ndim == 3 else t
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def square(size=64, lo=16, hi=48) -> np.ndarray:
    """A white square [lo, hi) x [lo, hi) on black."""
    img = np.zeros((size, size), np.uint8)
    img[lo:hi, lo:hi] = 255
    return img


def scene(size=128) -> np.ndarray:
    """Shapes of several contrasts (a square, a disc, a triangle) over a gentle ramp."""
    img = np.zeros((size, size), np.uint8)
    cv2.rectangle(img, (10, 12), (50, 60), 255, -1)
    cv2.circle(img, (90, 40), 22, 160, -1)
    cv2.fillPoly(img, [np.array([[20, 120], [60, 75], [100, 118]])], 90)
    ramp = np.mgrid[0:size, 0:size][1] // 4
    return np.clip(img.astype(int) + ramp, 0, 255).astype(np.uint8)


def textured(size=96, seed=0) -> np.ndarray:
    """Edges of many strengths: blurred noise plus shapes of low to high contrast."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size)).astype(np.float32), (0, 0), 3) * 2 - 128
    for i, level in enumerate((20, 45, 80, 130, 200)):
        cv2.circle(base, (12 + 18 * i, 20 + 12 * i), 8, float(level), -1)
    return np.clip(base + 30, 0, 255).astype(np.uint8)


def edges(pre, grey: np.ndarray) -> np.ndarray:
    return pre(to_images(grey_rgb(grey)))[0, 0].numpy() > 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def dilate(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


@pytest.mark.parametrize("name", sorted(PREPROCESSORS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shape_dtype_and_range(name, dtype):
    rng = np.random.default_rng(1)
    images = to_images(rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)).to(dtype)
    out = make_preprocessor(name)(images)
    assert out.shape == (2, 3, 40, 56) and out.dtype == dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out[:, 0], out[:, 1]) or name == "passthrough"


def test_canny_finds_the_border_of_a_white_square_and_nothing_else():
    img = square()
    got = edges(Canny(100, 200, sigma=1.0), img)
    yy, xx = np.mgrid[0:64, 0:64]
    # distance (in pixels, chessboard) from the square's boundary, which lies between 15|16 and 47|48
    inside = np.minimum.reduce([yy - 16, 47 - yy, xx - 16, 47 - xx])  # >= 0 inside the square
    outside = np.maximum.reduce([15 - yy, yy - 48, 15 - xx, xx - 48])  # >= 0 outside
    band = (inside == 0) | (outside == 0)  # the pixel rows on either side of the step
    assert got.any() and not (got & ~band).any(), "edges only on the square's border"
    assert not got[inside >= 2].any() and not got[outside >= 2].any()
    for side in (got[16:48, 15:17].any(1), got[16:48, 47:49].any(1), got[15:17, 16:48].any(0), got[47:49, 16:48].any(0)):
        assert side[2:-2].all(), "every side is one closed line (corners aside)"
    # one pixel thin: along each side one of the two pixel rows of the step, not both
    assert (got[20:44, 15:17].sum(1) == 1).all()


def test_thresholds_behave_monotonically():
    img = textured()
    counts = []
    for high in (40, 80, 160, 320):  # a higher high threshold: a subset of the edges
        current = edges(Canny(20, high), img)
        if counts:
            assert not (current & ~previous).any()
        previous = current
        counts.append(int(current.sum()))
    for low in (5, 20, 60, 120):  # a higher low threshold (same high): a subset too
        current = edges(Canny(low, 120), img)
        if low > 5:
            assert not (current & ~previous).any()
        previous = current
        counts.append(int(current.sum()))
    assert counts[0] > counts[3] > 0 and counts[4] > counts[7] > 0, counts  # the knobs do something
    with pytest.raises(ValueError, match="canny thresholds"):
        Canny(200, 100)
    pre = Canny(50, 100)
    with pytest.raises(ValueError, match="canny thresholds"):
        pre.set_thresholds(-1, 10)
    assert float(pre.low) == 50 and float(pre.high) == 100  # a rejected change keeps the old values


@pytest.mark.parametrize("pre_blur", [1.0, 2.0])
@pytest.mark.parametrize("low, high", [(20, 60), (100, 200)])
def test_canny_agrees_with_opencv_on_the_same_input(pre_blur, low, high):
    """Same uint8 input, no blur of our own: cv2.Canny (L2 gradient) runs the same Sobel, 4-direction
    non-maximum suppression with the same tie rule and the same strict thresholds; what remains is
    its fixed-point direction test, its border rows and the bounded hysteresis. Measured IoU
    0.988-0.994 on this scene; a wrong tie rule or direction bin drops it to about 0.5-0.75 (each
    step edge then picks the other pixel of its pair), so 0.97 separates the two."""
    grey = cv2.GaussianBlur(scene(), (0, 0), pre_blur)
    ours = edges(Canny(low, high, sigma=0), grey)
    ref = cv2.Canny(grey, low, high, L2gradient=True) > 0
    assert ref.sum() > 200
    assert iou(ours, ref) > 0.97


def test_canny_with_its_blur_agrees_with_opencv_within_one_pixel():
    """With our float blur against cv2.GaussianBlur (rounded to uint8) + cv2.Canny, ties between the
    two pixels of a step edge fall either way (exact IoU measured 0.73-0.81), but every edge of one
    lies within one pixel of an edge of the other (measured 1.0 both ways)."""
    grey = scene()
    for sigma in (1.0, 1.4):
        taps = gaussian_kernel(sigma).numel()
        ref = cv2.Canny(cv2.GaussianBlur(grey, (taps, taps), sigma, borderType=cv2.BORDER_REFLECT_101), 50, 100,
                        L2gradient=True) > 0
        ours = edges(Canny(50, 100, sigma=sigma), grey)
        assert (ours & dilate(ref)).sum() / ours.sum() > 0.98
        assert (ref & dilate(ours)).sum() / ref.sum() > 0.98
        assert iou(ours, ref) > 0.6


def test_soft_edge_is_high_on_lines_and_independent_of_exposure():
    img = square()
    images = to_images(grey_rgb(img))
    out = SoftEdge(sigma=1.0)(images)[0, 0]
    assert float(out.max()) == pytest.approx(1.0, abs=1e-5)
    assert float(out[24:40, 24:40].max()) < 1e-6 and float(out[:8, :8].max()) < 1e-6  # flat areas stay black
    assert float(out[16:48, 15:17].mean()) > 0.5
    darker = images * 0.5 - 0.5  # half the brightness: same map
    torch.testing.assert_close(SoftEdge(sigma=1.0)(darker)[0, 0], out, atol=1e-5, rtol=0)
    flat = torch.zeros(1, 3, 32, 32)
    assert float(SoftEdge()(flat).abs().max()) < 1e-5  # no edges: rounding noise is not stretched to white


def test_frames_of_a_batch_do_not_affect_each_other():
    a, b = grey_rgb(square()), grey_rgb(textured(64))
    batch = to_images(np.stack([a, b]))
    for pre in (Canny(50, 120), SoftEdge(), Passthrough()):
        both = pre(batch)  # binary edges exactly; soft values up to convolution rounding with the batch size
        tol = 1e-5 if isinstance(pre, SoftEdge) else 0.0
        torch.testing.assert_close(both[1:], pre(to_images(b)), atol=tol, rtol=0)
        torch.testing.assert_close(both[:1], pre(to_images(a)), atol=tol, rtol=0)


def test_passthrough_is_the_frame_in_unit_range():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = Passthrough()(to_images(rgb))
    torch.testing.assert_close(out[0].permute(1, 2, 0), torch.from_numpy(rgb).float() / 255, atol=1e-6, rtol=0)


def test_unknown_preprocessor_or_parameter_is_one_clear_error():
    with pytest.raises(ValueError, match="must be one of canny, soft_edge, passthrough"):
        make_preprocessor("depth_magic")
    with pytest.raises(ValueError, match="preprocessor canny"):
        make_preprocessor("canny", radius=3)
    with pytest.raises(ValueError, match="sigma"):
        make_preprocessor("soft_edge", sigma=-1.0)


@pytest.mark.parametrize("name", sorted(PREPROCESSORS))
def test_whole_graph_without_breaks_and_live_thresholds_without_retracing(name):
    """torch.compile(fullgraph=True) fails on any graph break: .item(), host syncs, data-dependent
    Python branches or shapes. The same properties make the preprocessor CUDA-graph capturable
    (test_core_gpu_preprocess.py captures it on a GPU). A threshold change must not retrace."""
    traces = []

    def backend(graph_module, example_inputs):
        traces.append(graph_module)
        return graph_module.forward

    pre = make_preprocessor(name)
    compiled = torch.compile(pre.__call__, fullgraph=True, backend=backend)
    images = to_images(grey_rgb(textured(64)))
    torch.testing.assert_close(compiled(images), pre(images), atol=0, rtol=0)
    if isinstance(pre, Canny):
        before = compiled(images).clone()
        pre.set_thresholds(10, 30)
        after = compiled(images)
        torch.testing.assert_close(after, pre(images), atol=0, rtol=0)
        assert not torch.equal(before, after)
    assert len(traces) == 1
