"""The conditioning the settings ask for (ControlNet, IP-Adapter and LoRA slots), as plain data.

`conditioning_of(settings)` reads the schema's slot fields into one `Conditioning` value: what
must be loaded (its `keys()`: a new key of a kind means a background load) and the live numbers
(scales, weights, Canny thresholds: applied at once). Also the CLI shorthand
`SOURCE@NUMBER` of `--lora` and `--controlnet`. Pure Python (no torch): the CLI imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .schema import CONTROLNET_SLOTS, LORA_SLOTS, SettingsError, field, split_controlnet, validate

KINDS = ("loras", "controlnets", "ip_adapter")  # loaded separately, each all or nothing
LABELS = {"loras": "LoRAs", "controlnets": "ControlNets", "ip_adapter": "IP-Adapter"}


def lora_field(slot: int) -> str:
    return f"lora_{slot}"


def controlnet_field(slot: int) -> str:
    return f"controlnet_{slot}"


# the settings that name what a kind loads (a failed load puts exactly these back)
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "loras": tuple(lora_field(i) for i in range(1, LORA_SLOTS + 1)),
    "controlnets": tuple(controlnet_field(i) for i in range(1, CONTROLNET_SLOTS + 1)) + ("depth_model",),
    "ip_adapter": ("ip_adapter", "ip_adapter_image"),
}


@dataclass(frozen=True)
class LoraSlot:
    slot: int
    source: str
    weight: float

    @property
    def name(self) -> str:
        return lora_field(self.slot)


@dataclass(frozen=True)
class ControlSlot:
    slot: int
    preprocessor: str
    source: str
    scale: float

    @property
    def name(self) -> str:
        return controlnet_field(self.slot)


@dataclass(frozen=True)
class Conditioning:
    """The slots in use and their live numbers."""

    loras: tuple[LoraSlot, ...] = ()
    controlnets: tuple[ControlSlot, ...] = ()
    canny_low: float = 100.0
    canny_high: float = 200.0
    depth_model: str = ""
    ip_adapter: Optional[str] = None
    ip_adapter_image: Optional[str] = None
    ip_adapter_scale: float = 1.0
    lora_fuse: bool = False  # the LoRAs folded into the weights (a number: no load)

    def key(self, kind: str) -> tuple:
        """What a kind loads; equal keys need no load (numbers are not part of it)."""
        if kind == "loras":
            return tuple((s.slot, s.source) for s in self.loras)
        if kind == "controlnets":
            nets = tuple((s.slot, s.preprocessor, s.source) for s in self.controlnets)
            depth = self.depth_model if any(s.preprocessor == "depth" for s in self.controlnets) else None
            return nets + ((("depth_model", depth),) if depth else ())
        if kind == "ip_adapter":
            return (self.ip_adapter, self.ip_adapter_image) if self.ip_adapter else ()
        raise KeyError(kind)

    def keys(self) -> dict[str, tuple]:
        return {kind: self.key(kind) for kind in KINDS}


def conditioning_of(settings: Any) -> Conditioning:
    """The conditioning StreamSettings ask for; SettingsError (nothing applied) for thresholds the
    wrong way round."""
    if settings.canny_low > settings.canny_high:
        raise SettingsError("canny_low", f"must be at most canny_high ({settings.canny_high}), got {settings.canny_low}")
    loras = tuple(LoraSlot(i, getattr(settings, lora_field(i)), getattr(settings, f"lora_{i}_weight"))
                  for i in range(1, LORA_SLOTS + 1) if getattr(settings, lora_field(i)))
    nets = []
    for i in range(1, CONTROLNET_SLOTS + 1):
        text = getattr(settings, controlnet_field(i))
        if text:
            preprocessor, source = split_controlnet(text)
            nets.append(ControlSlot(i, preprocessor, source, getattr(settings, f"controlnet_{i}_scale")))
    return Conditioning(loras, tuple(nets), settings.canny_low, settings.canny_high, settings.depth_model,
                        settings.ip_adapter, settings.ip_adapter_image, settings.ip_adapter_scale, settings.lora_fuse)


def idle_fields(values: Mapping[str, Any]) -> set[str]:
    """The conditioning settings that do nothing now (a slot that is off and its number, the Canny
    thresholds without a canny net, ...), for short listings such as `dreamcam status`."""
    idle: set[str] = set()
    for i in range(1, LORA_SLOTS + 1):
        if not values.get(lora_field(i)):
            idle |= {lora_field(i), f"lora_{i}_weight"}
    used = set()
    for i in range(1, CONTROLNET_SLOTS + 1):
        text = values.get(controlnet_field(i))
        if text:
            used.add(split_controlnet(text)[0])
        else:
            idle |= {controlnet_field(i), f"controlnet_{i}_scale"}
    if "canny" not in used:
        idle |= {"canny_low", "canny_high"}
    if "depth" not in used:
        idle.add("depth_model")
    if not values.get("ip_adapter"):
        idle |= {"ip_adapter", "ip_adapter_image", "ip_adapter_scale"}
    return idle


def source_values(settings: Any, kind: str) -> dict[str, Any]:
    """The source settings of a kind, {field: value}."""
    return {name: getattr(settings, name) for name in SOURCE_FIELDS[kind]}


def absolute_source(name: str, value: Any) -> Any:
    """A source setting sent to a running app (`dreamcam set`): a relative path that exists here
    becomes absolute (the app may run in another folder); hub ids and other values stay."""
    f = field(name)
    if f.syntax not in ("source", "controlnet") or not isinstance(value, str):
        return value
    head, source = ("", value) if f.syntax == "source" else split_controlnet(value)
    path = Path(source).expanduser()
    if not source or path.is_absolute() or not path.exists():
        return value
    return f"{head}:{path.absolute()}" if head else str(path.absolute())


# ---- the CLI shorthand: --lora SOURCE@WEIGHT, --controlnet PREPROCESSOR:SOURCE@SCALE ------------
def split_number(text: str, option: str) -> tuple[str, Optional[float]]:
    """"style.safetensors@0.7" -> ("style.safetensors", 0.7); no '@NUMBER' at the end: (text, None)."""
    head, at, tail = text.rpartition("@")
    if not at:
        return text.strip(), None
    try:
        return head.strip(), float(tail)
    except ValueError:
        raise SettingsError(option, f"expected SOURCE@NUMBER (e.g. style.safetensors@0.7), got {text!r}") from None


def slot_options(kind: str, given: Iterable[str], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that repeated `--lora` / `--controlnet` options fill: slot 1, 2, ... in order
    (source, and weight or scale when '@NUMBER' ends it). `explicit`: the slot options given too
    (--lora-2 ...); naming a slot both ways is refused."""
    option, slots, source_of, number_of = {
        "lora": ("--lora", LORA_SLOTS, lora_field, lambda i: f"lora_{i}_weight"),
        "controlnet": ("--controlnet", CONTROLNET_SLOTS, controlnet_field, lambda i: f"controlnet_{i}_scale"),
    }[kind]
    items = list(given)
    if len(items) > slots:
        raise SettingsError(option, f"at most {slots} (one per slot), got {len(items)}")
    out: dict[str, Any] = {}
    for i, text in enumerate(items, start=1):
        source, number = split_number(text, option)
        names = (source_of(i), number_of(i))
        for name in names:
            if explicit.get(name) is not None:
                raise SettingsError(option, f"fills {names[0]} in order, which {field(name).option} also sets; "
                                            "use one of the two")
        out[names[0]] = validate(names[0], source)
        if number is not None:
            out[names[1]] = validate(names[1], number)
    return out
