"""A stand-in for OBS's `obspython` module, just big enough to run obs_scripts/dreamcam_obs.py's
OBS glue outside OBS: settings objects with defaults, a properties tree, timers and a log."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "obs_scripts" / "dreamcam_obs.py"

OBS_TEXT_DEFAULT, OBS_TEXT_PASSWORD, OBS_TEXT_MULTILINE, OBS_TEXT_INFO = 0, 1, 2, 3
OBS_COMBO_TYPE_LIST, OBS_COMBO_FORMAT_STRING = 2, 3
OBS_GROUP_NORMAL = 1
LOG_ERROR, LOG_WARNING, LOG_INFO = 100, 200, 300


class Data:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.defaults: dict[str, Any] = {}

    def get(self, name: str, zero: Any) -> Any:
        return self.values.get(name, self.defaults.get(name, zero))


class Prop:
    def __init__(self, name: str, desc: str, kind: str, **extra: Any) -> None:
        self.name, self.desc, self.kind, self.extra = name, desc, kind, extra
        self.items: list[tuple[str, str]] = []


class Props:
    """A properties tree; as in OBS, a property inside a group is found from the top too."""

    def __init__(self) -> None:
        self.props: dict[str, Prop] = {}
        self.parent: Props | None = None

    def add(self, prop: Prop) -> Prop:
        if prop.name in self.props:
            raise ValueError(f"duplicate property {prop.name}")
        self.props[prop.name] = prop
        if self.parent is not None:
            self.parent.add(prop)
        return prop


def add_group(parent: Props, name: str, desc: str, kind: int, box: Props) -> Prop:
    group = parent.add(Prop(name, desc, "group", group_type=kind, box=box))
    box.parent = parent
    for prop in box.props.values():
        parent.add(prop)
    return group


def make_module() -> types.ModuleType:
    m = types.ModuleType("obspython")
    for name, value in dict(globals()).items():
        if name.isupper():
            setattr(m, name, value)
    m.log = []
    m.timers = []

    m.obs_data_create = Data
    m.obs_data_set_default_string = lambda d, n, v: d.defaults.__setitem__(n, v)
    m.obs_data_set_default_int = lambda d, n, v: d.defaults.__setitem__(n, int(v))
    m.obs_data_set_default_double = lambda d, n, v: d.defaults.__setitem__(n, float(v))
    m.obs_data_set_default_bool = lambda d, n, v: d.defaults.__setitem__(n, bool(v))
    m.obs_data_set_string = lambda d, n, v: d.values.__setitem__(n, v)
    m.obs_data_set_int = lambda d, n, v: d.values.__setitem__(n, int(v))
    m.obs_data_set_double = lambda d, n, v: d.values.__setitem__(n, float(v))
    m.obs_data_set_bool = lambda d, n, v: d.values.__setitem__(n, bool(v))
    m.obs_data_get_string = lambda d, n: d.get(n, "")
    m.obs_data_get_int = lambda d, n: int(d.get(n, 0))
    m.obs_data_get_double = lambda d, n: float(d.get(n, 0.0))
    m.obs_data_get_bool = lambda d, n: bool(d.get(n, False))

    m.obs_properties_create = Props
    m.obs_properties_destroy = lambda p: None
    m.obs_properties_get = lambda p, n: p.props.get(n)
    m.obs_properties_add_text = lambda p, n, d, t: p.add(Prop(n, d, "text", text_type=t))
    m.obs_properties_add_int = lambda p, n, d, lo, hi, st: p.add(Prop(n, d, "int", low=lo, high=hi, step=st))
    m.obs_properties_add_int_slider = lambda p, n, d, lo, hi, st: p.add(
        Prop(n, d, "int_slider", low=lo, high=hi, step=st))
    m.obs_properties_add_float_slider = lambda p, n, d, lo, hi, st: p.add(
        Prop(n, d, "float_slider", low=lo, high=hi, step=st))
    m.obs_properties_add_float = lambda p, n, d, lo, hi, st: p.add(Prop(n, d, "float", low=lo, high=hi, step=st))
    m.obs_properties_add_group = add_group
    m.obs_properties_add_bool = lambda p, n, d: p.add(Prop(n, d, "bool"))
    m.obs_properties_add_list = lambda p, n, d, t, f: p.add(Prop(n, d, "list"))
    m.obs_properties_add_button = lambda p, n, d, cb: p.add(Prop(n, d, "button", callback=cb))
    m.obs_property_list_add_string = lambda prop, label, value: prop.items.append((label, value))
    m.obs_property_list_clear = lambda prop: prop.items.clear()

    m.timer_add = lambda cb, ms: m.timers.append(cb)
    m.timer_remove = lambda cb: m.timers.remove(cb) if cb in m.timers else None
    m.script_log = lambda level, msg: m.log.append(msg)
    return m


def load_script(*, block_obsws: bool = False, path: Path = SCRIPT) -> tuple[types.ModuleType, types.ModuleType]:
    """Import a fresh copy of the OBS script (from `path`) with a fresh stand-in obspython; returns
    (script, obs). block_obsws: make `import obsws_python` fail, as in an OBS whose Python lacks it."""
    obs = make_module()
    saved = {k: sys.modules.get(k) for k in ("obspython", "obsws_python")}
    sys.modules["obspython"] = obs
    if block_obsws:
        sys.modules["obsws_python"] = None  # type: ignore[assignment]  # makes the import fail
    try:
        spec = importlib.util.spec_from_file_location("dreamcam_obs_under_test", path)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module, obs
