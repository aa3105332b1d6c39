"""ControlNet preprocessors in torch ops: frame -> control image, capturable in a CUDA graph.

Every preprocessor takes the stream's fitted frames as (B, 3, H, W) images in [-1, 1] (the tensor
the step feeds the VAE, so the control image follows the frame's fit policy: crop, letterbox or
stretch) and returns the ControlNet conditioning image (B, 3, H, W) in [0, 1] in the input dtype
(computed in float32). No host syncs, no `.item()`, no data-dependent shapes or branches: the
work per frame is the same fixed sequence of kernels, so it can run inside the captured step.
Live parameters (Canny thresholds) are 0-d tensors updated in place, so changing them needs no
recapture; parameters that change kernel sizes (blur sigma, hysteresis iterations) are fixed at
construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from .limits import PREPROCESSOR_NAMES

Tensor = torch.Tensor
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's RGB2GRAY
TAN_22_5 = math.tan(math.radians(22.5))
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
TIE = 1e-2  # gradient magnitudes (grey levels x Sobel gain) closer than this are equal; cv2 works in whole units
MIN_PEAK = 4 * 2 / 255  # soft_edge: the Sobel magnitude of a 2-grey-level step; weaker maxima are not stretched


class Preprocessor(Protocol):
    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------- building blocks
@dataclass(frozen=True)
class Filters:
    """The constant kernels, made once on the device (creating them per call would copy from the
    host, which a CUDA graph capture does not allow)."""

    luma: Tensor  # (1, 3, 1, 1)
    sobel_x: Tensor  # (1, 1, 3, 3)
    sobel_y: Tensor
    taps: Tensor | None  # (2r+1,) Gaussian taps, None = no blur


def make_filters(sigma: float = 1.0, device: torch.device | str = "cpu") -> Filters:
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma: must be a finite number >= 0 (0 = no blur), got {sigma!r}")
    kx = torch.tensor(_SOBEL_X, device=device).view(1, 1, 3, 3)
    return Filters(luma=torch.tensor(LUMA, device=device).view(1, 3, 1, 1), sobel_x=kx,
                   sobel_y=kx.transpose(2, 3).contiguous(),
                   taps=gaussian_kernel(sigma).to(device) if sigma > 0 else None)


def luminance(images: Tensor, filters: Filters) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W) float32 grey levels in [0, 255]."""
    return ((images.float() + 1.0) * 127.5 * filters.luma).sum(dim=1, keepdim=True)


def gaussian_kernel(sigma: float, radius: int | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps exp(-x^2 / (2 sigma^2)), x = -radius..radius (default ceil(3 sigma))."""
    radius = math.ceil(3 * sigma) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (taps / taps.sum()).float()


def blur(gray: Tensor, taps: Tensor | None) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect-101 borders (OpenCV's default)."""
    if taps is None or taps.numel() == 1:
        return gray
    r = taps.numel() // 2
    out = F.conv2d(F.pad(gray, (r, r, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), taps.view(1, 1, -1, 1))


def sobel(gray: Tensor, filters: Filters) -> tuple[Tensor, Tensor]:
    """3x3 Sobel derivatives (x to the right, y downwards) with replicated borders."""
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, filters.sobel_x), F.conv2d(padded, filters.sobel_y)


def _shifted(x: Tensor, dy: int, dx: int) -> Tensor:
    """out[y, x] = x[y + dy, x + dx], zero outside the image."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]


def non_max_suppression(mag: Tensor, gx: Tensor, gy: Tensor, tie: float = TIE) -> Tensor:
    """Keep pixels that are a maximum along their gradient direction, quantised to 0/45/90/135
    degrees. Ties are broken as OpenCV does (axes: strict against the left / upper neighbour, >= the
    other; diagonals: strict on both sides); magnitudes within `tie` count as equal, so float
    rounding (which differs with the batch size or the kernel) cannot flip the pixel a symmetric
    step edge keeps."""
    ax, ay = gx.abs(), gy.abs()
    horizontal = ay <= TAN_22_5 * ax
    vertical = ay >= ax / TAN_22_5
    diagonal_down = ~horizontal & ~vertical & (gx * gy > 0)  # gradient to (+x, +y) or (-x, -y)
    diagonal_up = ~horizontal & ~vertical & ~(gx * gy > 0)

    def above(dy: int, dx: int) -> Tensor:
        return mag > _shifted(mag, dy, dx) + tie

    def not_below(dy: int, dx: int) -> Tensor:
        return mag >= _shifted(mag, dy, dx) - tie

    keep_h = above(0, -1) & not_below(0, 1)
    keep_v = above(-1, 0) & not_below(1, 0)
    keep_d = above(-1, -1) & above(1, 1)
    keep_u = above(1, -1) & above(-1, 1)
    return (horizontal & keep_h) | (vertical & keep_v) | (diagonal_down & keep_d) | (diagonal_up & keep_u)


def hysteresis(strong: Tensor, weak: Tensor, iterations: int) -> Tensor:
    """Edges = weak pixels 8-connected to a strong one by a chain of at most `iterations` weak
    pixels: a fixed number of 3x3 dilations inside the weak mask (full hysteresis follows chains of
    any length; this is its static approximation)."""
    edges = strong.float()
    allowed = (weak | strong).float()
    for _ in range(iterations):
        edges = F.max_pool2d(edges, 3, stride=1, padding=1) * allowed
    return edges


def _rgb(mask: Tensor, dtype: torch.dtype) -> Tensor:
    return mask.to(dtype).expand(-1, 3, -1, -1).contiguous()


def canny(images: Tensor, low: Tensor | float, high: Tensor | float, filters: Filters,
          iterations: int = 8) -> Tensor:
    """Canny edges as a ControlNet image: white (1) edges on black (0), (B, 3, H, W).
    `low` and `high` are gradient-magnitude thresholds on the 0..255 grey scale (as cv2.Canny with
    L2gradient=True): magnitude > high starts an edge, magnitude > low continues one."""
    gray = blur(luminance(images, filters), filters.taps)
    gx, gy = sobel(gray, filters)
    mag = torch.sqrt(gx * gx + gy * gy)
    thin = non_max_suppression(mag, gx, gy)
    strong = thin & (mag > high)
    weak = thin & (mag > low)
    return _rgb(hysteresis(strong, weak, iterations), images.dtype)


def soft_edge(images: Tensor, filters: Filters, min_peak: float = MIN_PEAK) -> Tensor:
    """Soft edges: the Sobel gradient magnitude of the (blurred) grey image, in [0, 1] grey units,
    divided by each image's maximum (at least `min_peak`, so a flat image's rounding noise is not
    stretched to white): lines are white, flat areas black, and the map does not depend on the exposure."""
    gray = blur(luminance(images, filters) / 255.0, filters.taps)
    gx, gy = sobel(gray, filters)
    mag = torch.sqrt(gx * gx + gy * gy)
    peak = mag.amax(dim=(1, 2, 3), keepdim=True)
    return _rgb((mag / peak.clamp_min(min_peak)).clamp(0.0, 1.0), images.dtype)


# --------------------------------------------------------------------------- preprocessors
class Canny:
    """Canny with live thresholds (0-d tensors on `device`, rewritten in place by `set_thresholds`)."""

    name = "canny"

    def __init__(self, low: float = 100.0, high: float = 200.0, *, sigma: float = 1.0, iterations: int = 8,
                 device: torch.device | str = "cpu") -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"canny iterations: must be a whole number >= 0 (hysteresis reach), got {iterations!r}")
        self.filters = make_filters(sigma, device)
        self.iterations = iterations
        self.low = torch.zeros((), device=device)
        self.high = torch.zeros((), device=device)
        self.set_thresholds(low, high)

    @staticmethod
    def check_thresholds(low: float, high: float) -> None:
        """0 <= low <= high (grey-level gradient units, 0..~1442); raises ValueError naming them."""
        values = (low, high)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values) \
                or not 0 <= low <= high:
            raise ValueError(f"canny thresholds: need 0 <= low <= high, got low={low!r}, high={high!r}")

    def set_thresholds(self, low: float, high: float) -> None:
        """Live (see check_thresholds)."""
        self.check_thresholds(low, high)
        self.low.fill_(float(low))
        self.high.fill_(float(high))

    def __call__(self, images: Tensor) -> Tensor:
        return canny(images, self.low, self.high, self.filters, self.iterations)


class SoftEdge:
    """Normalised Sobel magnitude (a soft-edge / line map for softedge and lineart ControlNets)."""

    name = "soft_edge"

    def __init__(self, *, sigma: float = 1.0, device: torch.device | str = "cpu") -> None:
        self.filters = make_filters(sigma, device)

    def __call__(self, images: Tensor) -> Tensor:
        return soft_edge(images, self.filters)


class Passthrough:
    """The frame itself (tile and recolour nets)."""

    name = "passthrough"

    def __call__(self, images: Tensor) -> Tensor:
        return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


class External:
    """The control image comes from the app (a second source: camera, file), not from the frame.
    It lives in a persistent device tensor (B, 3, H, W) in [0, 1] that the stream allocates at its
    size (`allocate`, black until set) and the app rewrites in place (`set`, through
    `StreamDiffusion.set_control_image`, which fits the app's frame like the stream's own): a
    captured graph reads the newest image with no recapture."""

    name = "external"

    def __init__(self) -> None:
        self.image: Tensor | None = None

    def allocate(self, shape: tuple[int, ...], *, device: torch.device | str, dtype: torch.dtype) -> None:
        if self.image is None or tuple(self.image.shape) != tuple(shape) or self.image.dtype != dtype:
            self.image = torch.zeros(shape, device=device, dtype=dtype)

    def set(self, images: Tensor) -> None:
        """(1 or B, 3, H, W) in [0, 1] at the allocated size (one image is used for every frame)."""
        if self.image is None:
            raise RuntimeError("external control image: set the ControlNets on a stream first (it allocates the image)")
        if images.dim() != 4 or images.shape[0] not in (1, self.image.shape[0]) \
                or tuple(images.shape[1:]) != tuple(self.image.shape[1:]):
            raise ValueError(f"external control image: expected (1 or {self.image.shape[0]}, "
                             f"{', '.join(map(str, self.image.shape[1:]))}), got {tuple(images.shape)}")
        self.image.copy_(images.expand_as(self.image))

    def __call__(self, images: Tensor) -> Tensor:
        if self.image is None:
            raise RuntimeError("external control image: set the ControlNets on a stream first (it allocates the image)")
        return self.image


PREPROCESSORS = {"canny": Canny, "soft_edge": SoftEdge, "passthrough": Passthrough}  # the frame alone
# every name a ControlNet slot may use (core/limits.py, also read by the settings schema): depth loads a
# model (core/depth.py), external reads the app's image
assert set(PREPROCESSORS) | {"depth", "external"} == set(PREPROCESSOR_NAMES)


def make_preprocessor(name: str, *, device: torch.device | str = "cpu", **params) -> Preprocessor:
    """A preprocessor by name; `params` are its constructor's (e.g. low, high, sigma; depth:
    source (hub id or folder), dtype, local_files_only: see core/depth.py, which loads the model)."""
    if name not in PREPROCESSOR_NAMES:
        raise ValueError(f"preprocessor: must be one of {', '.join(PREPROCESSOR_NAMES)}, got {name!r}")
    if name == "depth":
        from .depth import load_depth_model

        return load_depth_model(device=device, **params)
    cls = PREPROCESSORS.get(name, External)
    if cls in (Passthrough, External):
        if params:
            raise ValueError(f"preprocessor {name}: takes no parameters, got {', '.join(params)}")
        return cls()
    try:
        return cls(device=device, **params)
    except TypeError as exc:
        raise ValueError(f"preprocessor {name}: {exc}") from exc
