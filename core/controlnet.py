"""ControlNets: loading with a family check, live conditioning scales, residuals for the stream's UNet batch.

A `ControlNetUnit` is one ControlNetModel with its preprocessor (core/preprocess.py) and a live
scale (a 0-d tensor on the device, rewritten in place: a captured graph reads the new value). A
`ControlNetStack` runs every unit whose scale is not 0 on the UNet's own batch and sums their
residuals, as diffusers' MultiControlNetModel does; a unit at scale 0 is not run at all (its
kernels leave the step: `structure_key` changes, an engine recaptures or keeps a graph per key).

Rows: the stream's UNet batch is groups of `fbs` rows in frame order ([uncond rows, cond rows]
for full CFG, [uncond x fbs, cond rows] for initialize); every row gets the control image of the
current frame it belongs to (row r -> control[r % fbs]), so all denoising slots follow the newest
control image. The residuals reach the UNet as the named inputs control_down_<i> and control_mid
(core/modules.py), added to the UNet's skip connections.

The stream owns one stack (`StreamDiffusion.set_controlnets`, empty by default) and calls it in
its step: `prepare(images)` on the fitted frames (so the control image follows the fit policy and
is computed inside the captured step), then `residuals(...)` for every UNet call. Each unit runs
its net through the engine's ControlNet call (`StepModules.controlnet(net)`: eager, compiled or
TensorRT), set once by `use_engine`.

Concurrency (core/side_streams.py): each active unit's preprocessor runs on a side stream of its
own, beside the VAE encoder on the main stream (a depth model costs about as much as the encoder);
`launch` runs each unit's net on that side stream too, and `collect` makes the main stream wait
for them and sums the residuals. Between the two the stream runs the UNet's down half where the
engine has one (core/unet_halves.py): the nets run beside it. Without halves the last unit runs
on the main stream, beside the others.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch

from .loading import FAMILY_LABELS, Components, ModelLoadError, _check_source, _explain, detect_family
from .modules import CONTROLNET_COND_NAMES, ControlNetCall, EagerControlNet, control_residual_names
from .preprocess import Canny, External, Preprocessor
from .side_streams import SideStreams

Tensor = torch.Tensor
ControlNetFactory = Callable[[Any], ControlNetCall]  # a loaded ControlNetModel -> the engine's call of it
_serials = itertools.count(1)


class ControlNetError(ModelLoadError, ValueError):
    """A ControlNet could not be loaded or set; the message names it and the fix."""


def load_controlnet(source: str, components: Components, *, config: str | None = None,
                    local_files_only: bool = False):
    """A ControlNetModel from a hub id, a diffusers folder or a single .safetensors file (with `config=`
    a diffusers ControlNet folder or hub id of the same architecture), on the components' device and
    dtype, checked to fit the loaded UNet."""
    from diffusers import ControlNetModel

    try:
        kind = _check_source(source, "ControlNet")
    except ModelLoadError as exc:
        raise ControlNetError(str(exc)) from exc
    path = str(Path(source).expanduser()) if kind != "hub" else source
    try:
        if kind == "file":
            net = ControlNetModel.from_single_file(path, config=config, local_files_only=local_files_only)
        else:
            net = ControlNetModel.from_pretrained(path, local_files_only=local_files_only)
    except Exception as exc:
        if kind == "hub":
            raise ControlNetError(str(_explain("ControlNet", source, exc, local_files_only))) from exc
        hint = (" A single-file ControlNet needs config=<a diffusers ControlNet folder or hub id of the same "
                "architecture>." if kind == "file" and not config else "")
        raise ControlNetError(f"cannot load the ControlNet {source!r}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}.{hint}") from exc
    check_fits(source, net.config, components)
    return net.to(device=components.device, dtype=components.dtype).eval().requires_grad_(False)


def check_fits(source: str, config: Any, components: Components) -> None:
    """Raise ControlNetError unless a ControlNet of `config` can feed the loaded UNet."""
    model = FAMILY_LABELS[components.family]
    try:
        family = detect_family(config)
    except ModelLoadError:
        family = None
    if family != components.family:
        what = f"an {FAMILY_LABELS[family]} ControlNet" if family else "a ControlNet of an unknown model family"
        raise ControlNetError(f"ControlNet {source!r}: it is {what}, but the loaded model is {model}; "
                              f"use a ControlNet trained for {model}")
    theirs, ours = list(dict(config)["block_out_channels"]), list(components.unet.config.block_out_channels)
    if theirs != ours or dict(config).get("layers_per_block") != components.unet.config.layers_per_block:
        raise ControlNetError(f"ControlNet {source!r}: its blocks (channels {theirs}) do not match the loaded "
                              f"{model} UNet (channels {ours}); use a ControlNet made for this model's architecture")


def residual_shapes(config: Any, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """The per-row shape of every residual name for latents of height x width (for engines: export
    and capture inputs), from the ControlNet config: conv_in, each down block's layers and its
    downsampler (stride 2, so ceil(h / 2)), then the mid block."""
    cfg = dict(config)
    channels, layers = list(cfg["block_out_channels"]), int(cfg["layers_per_block"])
    shapes = [(channels[0], height, width)]
    h, w = height, width
    for i, c in enumerate(channels):
        shapes += [(c, h, w)] * layers
        if i < len(channels) - 1:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            shapes.append((c, h, w))
    names = control_residual_names(len(shapes))
    return dict(zip(names, shapes + [(channels[-1], h, w)]))


def _check_scale(name: str, scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ControlNetError(f"ControlNet {name!r}: scale must be a finite number (0 = off), got {scale!r}")


class ControlNetUnit:
    """One ControlNet, its preprocessor and its live conditioning scale."""

    def __init__(self, name: str, net, preprocessor: Preprocessor, scale: float = 1.0) -> None:
        self.name = name
        self.net = net
        self.preprocessor = preprocessor
        self.call: ControlNetCall = EagerControlNet(net)
        self._factory: ControlNetFactory | None = None
        self.scale_tensor = torch.zeros((), device=net.device, dtype=torch.float32)
        self.scale = 0.0
        self.set_scale(scale)

    def set_scale(self, scale: float) -> None:
        """Live; 0 = this net does no work at all (the stack skips it)."""
        _check_scale(self.name, scale)
        self.scale = float(scale)
        self.scale_tensor.fill_(self.scale)

    @property
    def active(self) -> bool:
        return self.scale != 0.0

    def use_engine(self, factory: ControlNetFactory | None) -> None:
        """Run the net through `factory(net)` (an engine's ControlNet call); None: eager. Once per factory."""
        if factory is not self._factory:
            self.call = factory(self.net) if factory is not None else EagerControlNet(self.net)
            self._factory = factory

    def residuals(self, sample: Tensor, timestep: Tensor, embeds: Tensor, control: Tensor,
                  added: dict[str, Tensor]) -> list[Tensor]:
        """The scaled residuals [down_0, ..., down_{N-1}, mid] for the batch; `control` (B, 3, H, W) in [0, 1]."""
        out = self.call(sample, timestep, embeds, control, **added)
        scale = self.scale_tensor.to(sample.dtype)
        return [r * scale for r in out]


class Launched(NamedTuple):
    """The nets `ControlNetStack.launch` enqueued: each unit's residuals by name (in unit order), and
    the unit that ran on the current stream (None: all ran on side streams)."""

    parts: dict[str, list[Tensor]]
    on_main: str | None


class ControlNetStack:
    """The ControlNets of a stream. `prepare(images)` makes each active unit's control image from the
    fitted frames; `residuals(...)` sums the active units' residuals for one UNet call. An empty
    stack does nothing (and costs nothing)."""

    def __init__(self, units: Sequence[ControlNetUnit] = ()) -> None:
        self.units = list(units)
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise ControlNetError(f"ControlNet names must differ, got {names}")
        self.serial = next(_serials)  # a new stack is new tensors and nets: a graph of another stack never fits
        self._controls: dict[str, Tensor] = {}
        self._blank: Tensor | None = None
        self._side: SideStreams | None = None

    def __len__(self) -> int:
        return len(self.units)

    @property
    def active(self) -> list[ControlNetUnit]:
        return [u for u in self.units if u.active]

    @property
    def scales(self) -> dict[str, float]:
        return {u.name: u.scale for u in self.units}

    @property
    def structure_key(self) -> tuple:
        """Changes exactly when the set of nets that run changes (a scale between 0 and non-0, or
        another stack); () while none runs, whatever the stack."""
        names = tuple(u.name for u in self.active)
        return (self.serial, names) if names else ()

    def unit(self, name: str) -> ControlNetUnit:
        for u in self.units:
            if u.name == name:
                return u
        raise ControlNetError(f"ControlNet {name!r}: no ControlNet of that name "
                              f"({', '.join(u.name for u in self.units) or 'none is set'})")

    def set_scales(self, scales: dict[str, float]) -> None:
        """Live scale changes by name; all checked first, nothing changes on an error."""
        units = {name: self.unit(name) for name in scales}
        for name, scale in scales.items():
            _check_scale(name, scale)
        for name, scale in scales.items():
            units[name].set_scale(scale)

    def set_canny_thresholds(self, low: float, high: float) -> None:
        """Live thresholds of every canny unit (the `canny_low`/`canny_high` settings): in-place
        tensor writes, no recapture; checked first (ValueError naming them)."""
        Canny.check_thresholds(low, high)
        for u in self.units:
            if isinstance(u.preprocessor, Canny):
                u.preprocessor.set_thresholds(low, high)

    def use_engine(self, factory: ControlNetFactory | None) -> None:
        for u in self.units:
            u.use_engine(factory)

    def bind(self, batch: int, height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> None:
        """Allocate the persistent tensors for frames of this size (the `external` images, black,
        and the blank frame txt2img's preprocessors see); kept when the size is unchanged."""
        if not self.units:  # the empty stack of every stream: nothing to hold
            return
        shape = (batch, 3, height, width)
        if self._blank is None or tuple(self._blank.shape) != shape or self._blank.dtype != dtype:
            self._blank = torch.full(shape, -1.0, device=device, dtype=dtype)
        for u in self.units:
            if isinstance(u.preprocessor, External):
                u.preprocessor.allocate(shape, device=device, dtype=dtype)

    def set_external(self, name: str, images: Tensor) -> None:
        """Write the control image of the `external` unit `name`: (1 or B, 3, H, W) in [0, 1] at the
        bound size (the stream fits the app's frame first: `StreamDiffusion.set_control_image`)."""
        unit = self.unit(name)
        if not isinstance(unit.preprocessor, External):
            raise ControlNetError(f"ControlNet {name!r}: its preprocessor is {unit.preprocessor.name}, not external; "
                                  f"only an external ControlNet takes a control image from the app")
        unit.preprocessor.set(images)

    def prepare(self, images: Tensor | None) -> None:
        """(fbs, 3, H, W) fitted frames in [-1, 1] (None: no input frame, txt2img: a black one) ->
        each active unit's control image (fbs, 3, H, W) in [0, 1]."""
        active = self.active
        if not active:
            self._controls = {}
            return
        if images is None:
            if self._blank is None:
                raise RuntimeError("ControlNetStack.bind(...) must run before a step without input frames")
            images = self._blank
        side = self._side_streams(images.device)
        controls = {}
        for u in active:
            with side.fork(u.name, reads=[images]):
                controls[u.name] = u.preprocessor(images).to(images.dtype)
        self._controls = controls

    def _side_streams(self, device: torch.device) -> SideStreams:
        if self._side is None or self._side.device != device:
            self._side = SideStreams(device)
        return self._side

    def residuals(self, sample: Tensor, timestep: Tensor, embeds: Tensor, **cond: Tensor) -> dict[str, Tensor]:
        """The summed residuals of the active units, named for the UNet call ({} when none is active)."""
        return self.collect(self.launch(sample, timestep, embeds, **cond))

    def launch(self, sample: Tensor, timestep: Tensor, embeds: Tensor, *, beside_main: bool = False,
               **cond: Tensor) -> "Launched":
        """Enqueue the active units' nets, each on its own side stream, the last one on the current
        stream unless `beside_main` (then the caller's next work, the UNet's down half, runs beside
        all of them). `collect` gives their residuals; until then nothing waits for them."""
        active = self.active
        added = {k: v for k, v in cond.items() if k in CONTROLNET_COND_NAMES}
        side = self._side_streams(sample.device)
        reads = [sample, timestep, embeds, *added.values()]
        parts: dict[str, list[Tensor]] = {}
        on_main = None
        for unit in active:
            control = self._controls.get(unit.name)
            if control is None:
                raise RuntimeError(f"ControlNet {unit.name!r}: no control image; call prepare(images) first")
            if unit is active[-1] and not beside_main:  # on the current stream, beside the others
                side.join(unit.name, outputs=[control])  # its preprocessor ran on its side stream
                parts[unit.name] = self._unit_residuals(unit, control, sample, timestep, embeds, added)
                on_main = unit.name
            else:
                with side.fork(unit.name, reads=reads):
                    parts[unit.name] = self._unit_residuals(unit, control, sample, timestep, embeds, added)
        return Launched(parts, on_main)

    def collect(self, launched: "Launched") -> dict[str, Tensor]:
        """The current stream waits for the launched nets; their residuals summed in unit order (as
        diffusers' MultiControlNetModel does), named for the UNet call ({} when none ran)."""
        if not launched.parts:
            return {}
        side = self._side_streams(next(iter(launched.parts.values()))[0].device)
        for name, res in launched.parts.items():
            if name != launched.on_main:
                side.join(name, outputs=res)
        parts = list(launched.parts.values())
        total = parts[0]
        for res in parts[1:]:
            total = [a + b for a, b in zip(total, res)]
        return dict(zip(control_residual_names(len(total) - 1), total))

    @staticmethod
    def _unit_residuals(unit: ControlNetUnit, control: Tensor, sample: Tensor, timestep: Tensor, embeds: Tensor,
                        added: dict[str, Tensor]) -> list[Tensor]:
        rows = control.repeat(sample.shape[0] // control.shape[0], 1, 1, 1)
        return unit.residuals(sample, timestep, embeds, rows, added)
