"""The core stream's ControlNets, IP-Adapter and LoRAs, following the settings live.

`Conditioner.condition(wanted, settings)` applies the live numbers at once (LoRA weights,
ControlNet and IP-Adapter scales, Canny thresholds: in place, no reload, no recapture) and asks
the `BackgroundLoader` for any new sources; the loads (files, the hub, weights to the GPU) run in
its thread while frames keep flowing with what is in force. `swap()`, between two frames, puts
finished loads on the stream through the graph driver's fenced methods (`set_controlnets`,
`set_ip_adapter`, `set_control_image`; LoRAs: `fence()`, then `LoraStack.apply` on the stack the
stream knows through `set_loras`). Each kind is all or
nothing: a failed load leaves that kind exactly as it was, and its outcome names the settings to
put back. The functions that read files and the hub are `Loaders` (the edges tests may slow).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from .conditioning import KINDS, Conditioning, ControlSlot, source_values
from .conditioning_loader import FAILED, LOADED, BackgroundLoader, Outcome, Request
from .schema import field

log = logging.getLogger(__name__)

NO_LIVE_WEIGHTS_ENGINES = ("tensorrt",)  # engines whose UNet is built with its weights and inputs fixed
FEED = "control_source"  # the outcome kind of the external ControlNets' second source


# ---- the edges: everything that reads files or the hub ------------------------------------------
def read_lora(stack: Any, source: str) -> Any:
    return stack.read(source)


def load_controlnet_net(source: str, components: Any, local_files_only: bool) -> Any:
    from dreamcam.core.controlnet import load_controlnet

    return load_controlnet(source, components, local_files_only=local_files_only)


def build_preprocessor(slot: ControlSlot, wanted: Conditioning, components: Any, local_files_only: bool) -> Any:
    from dreamcam.core.preprocess import make_preprocessor

    params: dict[str, Any] = {}
    if slot.preprocessor == "canny":
        params = dict(low=wanted.canny_low, high=wanted.canny_high)
    elif slot.preprocessor == "depth":  # a transformers depth model (helper cn's core/depth.py)
        params = dict(source=wanted.depth_model, dtype=components.dtype, local_files_only=local_files_only)
    return make_preprocessor(slot.preprocessor, device=components.device, **params)


def load_ip_adapter(source: str, components: Any, local_files_only: bool) -> Any:
    """Helper ip's core IP-Adapter (dreamcam.core.ip_adapter), loaded, not attached."""
    from dreamcam.core.ip_adapter import load_ip_adapter as load  # noqa: PLC0415 - helper ip's module

    return load(source, components, local_files_only=local_files_only)


def encode_image(adapter: Any, path: str) -> Any:
    """The style image's embedding (changes nothing: safe in the background); one error line when it is
    no image."""
    return adapter.encode_image(path)


@dataclass(frozen=True)
class Loaders:
    lora: Callable[[Any, str], Any] = read_lora
    controlnet: Callable[[str, Any, bool], Any] = load_controlnet_net
    preprocessor: Callable[[ControlSlot, Conditioning, Any, bool], Any] = build_preprocessor
    ip_adapter: Callable[[str, Any, bool], Any] = load_ip_adapter
    image: Callable[[Any, str], Any] = encode_image


def adapter_name(slot: int, source: str) -> str:
    """One peft adapter name per slot and source (a slot that changes LoRA loads the new one next
    to the old, so the swap is all or nothing)."""
    return f"lora_{slot}_{hashlib.sha1(source.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class _Net:
    """A ControlNet slot in force: what it was made from, and the core unit."""

    slot: ControlSlot
    unit: Any


@dataclass(frozen=True)
class Restore:
    """The context of a load: the source settings it tried, and those in force before it."""

    tried: dict[str, Any]
    in_force: dict[str, Any]


class Conditioner:
    """Owns the stream's LoRA stack, ControlNets and IP-Adapter, changed through `driver` (the
    engines' StreamDriver: its methods fence the frames in flight); `feed`: the `control_source` of
    external ControlNets, or None."""

    def __init__(self, driver: Any, engine_name: str, *, loaders: Optional[Loaders] = None,
                 local_files_only: bool = False, feed: Any = None) -> None:
        from dreamcam.core.lora import LoraStack

        self.driver = driver
        self.stream = stream = driver.stream
        self.fence = driver.fence
        self.engine_name = engine_name
        self.loaders = loaders or Loaders()
        self.local_files_only = local_files_only
        self.feed = feed
        self.loras = LoraStack(stream.components, local_files_only=local_files_only)
        stream.set_loras(self.loras)
        self.lora_names: dict[int, str] = {}  # slot -> adapter name in force
        self.nets: dict[int, _Net] = {}  # slot -> ControlNet in force
        self.ip_adapter: Any = None
        self.ip_source: Optional[str] = None
        self.wanted = Conditioning()
        self._in_force: dict[str, dict[str, Any]] = {}
        self._fed = -1  # the feed's frame number last given to the stream
        self._feed_error = ""
        self._written: dict[str, Any] = {}  # the numbers last written into the stream's objects
        self.loader = BackgroundLoader()

    # ---- from the frame loop ---------------------------------------------------------------
    def condition(self, wanted: Conditioning, settings: Any) -> None:
        """Numbers now; new sources start loading (never waits)."""
        self.wanted = wanted
        self._apply_numbers()
        for kind in KINDS:
            self.loader.want(kind, self._request(kind, wanted, settings))

    def swap(self) -> list[Outcome]:
        """Between two frames: install what finished loading, give external ControlNets the control
        source's newest frame; what happened."""
        outcomes = self.loader.swap()
        if any(o.state == LOADED for o in outcomes):
            self._written = {}  # new objects: every number is written again (also those changed meanwhile)
            self._apply_numbers()
        return outcomes + self._feed_external()

    def load_now(self, wanted: Conditioning, settings: Any) -> None:
        """Before the stream starts: load and install in this thread; raises what a load raises."""
        self.wanted = wanted
        for kind in KINDS:
            if wanted.key(kind):
                self.loader.run_now(kind, self._request(kind, wanted, settings))
            self._in_force[kind] = source_values(settings, kind)
        self._written = {}
        self._apply_numbers()

    def close(self) -> None:
        self.loader.close()
        if self.feed is not None:
            self.feed.close()

    # ---- numbers ---------------------------------------------------------------------------
    def _apply_numbers(self) -> None:
        """Write the numbers that differ from those last written (a prompt change rewrites no LoRA)."""
        w = self.wanted
        weights = {self.lora_names[s.slot]: s.weight for s in w.loras if s.slot in self.lora_names}
        scales = {s.slot: s.scale for s in w.controlnets}
        lost = bool(self._feed_error)  # an external net whose source is lost does no work until it is back
        net_scales = {net.unit.name: 0.0 if lost and net.slot.preprocessor == "external" else
                      scales.get(slot, net.slot.scale) for slot, net in self.nets.items()}
        thresholds = (w.canny_low, w.canny_high)
        ip_scale = w.ip_adapter_scale if self.ip_adapter is not None else None
        fuse = w.lora_fuse and bool(self.lora_names)
        written = self._written
        if (weights, fuse, net_scales, thresholds, ip_scale) == tuple(
                written.get(k) for k in ("weights", "fuse", "scales", "thresholds", "ip_scale")):
            return
        self.fence()  # no write lands under a frame in flight
        if weights and weights != written.get("weights"):
            self.stream.set_lora_weights(weights)  # fused: refolded in place
        if fuse != self.loras.fused:  # a structure change: the next frame captures (or recompiles) once
            self.stream.set_lora_fused(fuse)
        if net_scales and net_scales != written.get("scales"):
            self.driver.set_controlnet_scales(net_scales)
        if thresholds != written.get("thresholds"):
            self.stream.controlnets.set_canny_thresholds(*thresholds)  # every canny unit, in place
        if ip_scale is not None and ip_scale != written.get("ip_scale"):
            self.ip_adapter.set_scale(ip_scale)
        self._written = {"weights": weights, "fuse": fuse, "scales": net_scales, "thresholds": thresholds,
                         "ip_scale": ip_scale}

    def _feed_external(self) -> list[Outcome]:
        """The control source's newest frame into each external ControlNet; a lost / returned source is
        one outcome (its net off meanwhile)."""
        external = [net.unit.name for net in self.nets.values() if net.slot.preprocessor == "external"]
        if self.feed is None or not external:
            return []
        error = self.feed.error
        outcomes = []
        if error != self._feed_error:
            self._feed_error = error
            self._apply_numbers()
            outcomes.append(Outcome(FEED, FAILED if error else LOADED, f"control source {self.feed.name}",
                                    f"{error}; the external ControlNet is off until it is back" if error else ""))
        index, image = self.feed.latest()
        if image is not None and index != self._fed:
            self._fed = index
            for name in external:
                self.driver.set_control_image(name, image)
        return outcomes

    # ---- loads -----------------------------------------------------------------------------
    def _request(self, kind: str, wanted: Conditioning, settings: Any) -> Request:
        tried = source_values(settings, kind)
        if kind == "controlnets" and not any(s.preprocessor == "depth" for s in wanted.controlnets):
            tried.pop("depth_model")  # not loaded now: a failure must not put it back
        in_force = self._in_force.get(kind, {})
        context = Restore(tried, {name: in_force.get(name, field(name).default) for name in tried})
        load, install = {"loras": self._lora_job, "controlnets": self._controlnet_job,
                         "ip_adapter": self._ip_job}[kind](wanted)

        def install_and_record(value: Any) -> None:
            install(value)
            self._in_force[kind] = {**self._in_force.get(kind, {}), **tried}

        return Request(wanted.key(kind), load, install_and_record, describe(kind, wanted), context)

    def _check_engine(self, what: str) -> None:
        if self.engine_name in NO_LIVE_WEIGHTS_ENGINES:
            raise ValueError(f"{what} need the eager or compiled engine: the {self.engine_name} engine has the "
                             "UNet's weights and inputs built in (restart with --engine compiled)")

    def _lora_job(self, wanted: Conditioning) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        from dreamcam.core.lora import LoraSpec

        slots = wanted.loras
        names = {s.slot: adapter_name(s.slot, s.source) for s in slots}

        def load() -> Any:
            if slots:
                self._check_engine("LoRAs")
            loaded = set(self.loras.weights)
            return {s.source: self.loaders.lora(self.loras, s.source) for s in slots if names[s.slot] not in loaded}

        def install(files: Mapping[str, Any]) -> None:
            self.fence()
            specs = [LoraSpec(s.source, s.weight, names[s.slot]) for s in slots]
            self.loras.apply(specs, files=files)  # all or nothing
            self.lora_names = names

        return load, install

    def _controlnet_job(self, wanted: Conditioning) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        from dreamcam.core.controlnet import ControlNetStack, ControlNetUnit

        slots = wanted.controlnets
        components = self.stream.components

        def load() -> Any:
            if slots:
                self._check_engine("ControlNets")
            for slot in slots:
                if slot.preprocessor == "external" and self.feed is None:
                    raise ValueError(f"{slot.name}: the external preprocessor takes its images from a second source; "
                                     "start the app with --control-source SPEC (e.g. camera:1 or file:PATH)")
            have = dict(self.nets)
            nets = {}
            for slot in slots:
                old = have.get(slot.slot)
                same_net = old is not None and old.slot.source == slot.source
                net = old.unit.net if same_net else self.loaders.controlnet(slot.source, components,
                                                                            self.local_files_only)
                same_pre = same_net and old.slot.preprocessor == slot.preprocessor and slot.preprocessor != "depth"
                pre = old.unit.preprocessor if same_pre else \
                    self.loaders.preprocessor(slot, wanted, components, self.local_files_only)
                nets[slot.slot] = _Net(slot, ControlNetUnit(slot.name, net, pre, slot.scale))
            return nets

        def install(nets: dict[int, _Net]) -> None:
            self.driver.set_controlnets(ControlNetStack([nets[s].unit for s in sorted(nets)]))  # checks first
            self.nets = nets
            self._fed = -1  # a new external net gets the newest control frame at once

        return load, install

    def _ip_job(self, wanted: Conditioning) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        source, image = wanted.ip_adapter, wanted.ip_adapter_image
        components = self.stream.components

        def load() -> Any:
            if not source:
                return None, None
            self._check_engine("The IP-Adapter")
            # the same weights with another image: only the image is encoded (the adapter stays)
            adapter = self.ip_adapter if source == self.ip_source else \
                self.loaders.ip_adapter(source, components, self.local_files_only)
            return adapter, (self.loaders.image(adapter, image) if image else None)

        def install(value: tuple) -> None:
            adapter, embeds = value
            self.fence()
            if adapter is not None:
                adapter.set_image(embeds)  # None: no image (the unconditional image rows)
            self.driver.set_ip_adapter(adapter)
            self.ip_adapter, self.ip_source = adapter, source

        return load, install


def describe(kind: str, wanted: Conditioning) -> str:
    """What a load of `kind` brings, for status lines: "LoRAs lora_1 'style.safetensors'"."""
    if kind == "loras":
        parts = [f"{s.name} {s.source!r}" for s in wanted.loras]
        return "LoRAs " + (", ".join(parts) if parts else "(none)")
    if kind == "controlnets":
        parts = [f"{s.name} {s.preprocessor}:{s.source!r}" for s in wanted.controlnets]
        return "ControlNets " + (", ".join(parts) if parts else "(none)")
    return f"IP-Adapter {wanted.ip_adapter!r} with {wanted.ip_adapter_image!r}" if wanted.ip_adapter else \
        "IP-Adapter (none)"
