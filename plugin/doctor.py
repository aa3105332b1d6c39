"""`dreamcam doctor`: what works on this machine and what to fix, one check per line; commands
in a fix (between backticks) are printed on lines of their own, whole (`fix_lines`)."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False  # a failure here limits a feature but does not stop `dreamcam run`


def fix_lines(fix: str) -> list[str]:
    """A fix as printed lines: the prose, then each `command` alone on its line (never cut by
    the terminal's width, so it can be copied)."""
    parts = fix.split("`")
    joiners = ("", "then", "and", "or", ",")  # between two commands in a one-line fix
    prose = " ".join(p.strip() for p in parts[0::2] if p.strip() not in joiners)
    commands = [p.strip() for p in parts[1::2] if p.strip()]
    return ([prose] if prose else []) + [f"  {command}" for command in commands]


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, sys.version.split()[0], "" if ok else "install Python 3.10 or newer")


def check_torch() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", False, "not installed", "a CUDA build from pytorch.org for GPUs: `pip install torch`")]
    checks = [Check("torch", True, torch.__version__)]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        checks.append(Check("CUDA GPU", True, f"{name}, CUDA {torch.version.cuda}"))
        checks.append(check_cuda_graphs())
    else:
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU visible to CUDA"
        checks.append(Check("CUDA GPU", False, why,
                            "install an NVIDIA driver and a CUDA build of torch (the CPU works for the demo "
                            "only), e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu128`"))
    return checks


def check_cuda_graphs() -> Check:
    """Capture and replay a small CUDA graph: the stream's fast path needs it."""
    from dreamcam.engines.graphed import capture_check, uncaptured_message

    error = capture_check()
    if not error:
        return Check("CUDA graphs", True, "a test capture replays correctly")
    return Check("CUDA graphs", False, uncaptured_message(error),
                 "update the NVIDIA driver and torch; run `dreamcam run -v` and report the capture error", optional=True)


def check_tensorrt() -> Check:
    try:
        import tensorrt
    except Exception as exc:
        return Check("TensorRT", False, f"not importable ({type(exc).__name__})",
                     'optional, the fastest engine: `pip install "dreamcam[tensorrt]"`', optional=True)
    return Check("TensorRT", True, tensorrt.__version__, optional=True)


def check_engine(found=None) -> Check:
    """The engine `--engine auto` will run here and why, in one line (engines.choice: the app's own rule).
    `found`: what was detected (engines.choice.Detected); None = detect on this machine."""
    from dreamcam.engines.choice import choose_engine, detect, triton_install_hint

    found = found if found is not None else detect("cuda")
    choice = choose_engine(found)
    fix = ""
    if found.cuda and choice.engine == "eager":
        fix = f"for the compiled engine (about 1.5x faster) install Triton: {triton_install_hint(found.platform)}"
    return Check("engine (auto)", True, choice.line(), fix, optional=True)


def check_vcam() -> Check:
    from .devices import vcam_backends
    from .sinks.vcam import install_hint

    backends, error = vcam_backends(probe=True)
    if error:
        return Check("virtual camera", False, error, "`pip install pyvirtualcam`")
    working = [b["backend"] for b in backends if b["works"]]
    if working:
        return Check("virtual camera", True, "backend " + ", ".join(working))
    tried = ", ".join(b["backend"] for b in backends) or "none registered"
    return Check("virtual camera", False, f"no backend starts (tried: {tried})", install_hint())


def check_capture() -> list[Check]:
    from .devices import monitors

    found, error = monitors()
    checks = [Check("screen capture", not error, error or f"{max(0, len(found) - 1)} monitor(s)",
                    "" if not error else "needs a desktop session (DISPLAY on Linux) and `pip install mss`",
                    optional=True)]
    try:
        import cv2

        checks.append(Check("OpenCV (cameras)", True, cv2.__version__, optional=True))
    except ImportError:
        checks.append(Check("OpenCV (cameras)", False, "not installed", "`pip install opencv-python`", optional=True))
    return checks


def check_obs(host: str | None = None, port: int | None = None, password: str | None = None) -> Check:
    """Can we reach OBS's WebSocket server, and does it take our password?"""
    try:
        import obsws_python
    except ImportError:
        return Check("OBS WebSocket", False, "obsws-python is missing", '`pip install "dreamcam[obs]"`', optional=True)
    from .obs_bridge import connection_from_env, describe_connect_error, quiet_obsws_logging

    host, port, password = connection_from_env(host, port, password)
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        return Check("OBS WebSocket", False, f"nothing listens on {host}:{port}",
                     "start OBS and enable Tools > WebSocket Server Settings (needed for --obs only)",
                     optional=True)
    quiet_obsws_logging()  # obsws-python logs the password at INFO
    try:
        client = obsws_python.ReqClient(host=host, port=port, password=password, timeout=3)
        try:
            version = client.get_version()
        finally:
            client.disconnect()
    except Exception as exc:
        _, message = describe_connect_error(exc, host, port)
        return Check("OBS WebSocket", False, f"{host}:{port} answers but the connection failed", message,
                     optional=True)
    return Check("OBS WebSocket", True, f"OBS {version.obs_version}, obs-websocket "
                 f"{version.obs_web_socket_version} at {host}:{port}", optional=True)


def check_obs_panel(platform: str = sys.platform) -> list[Check]:
    """Is the Dreamcam panel in OBS's scene collection, and can OBS's Python import obsws-python?
    (From OBS's config folder: what the files can tell.)"""
    from . import obs_setup

    folder = obs_setup.config_dir(platform)
    if not folder.is_dir():
        return [Check("OBS panel", False, f"no OBS config folder at {folder} (OBS never ran as this user)",
                      "install OBS Studio 28 or newer and start it once (needed for --obs only)", optional=True)]
    install = obs_setup.panel_install(folder)
    copy = "`dreamcam obs-script --copy-to FOLDER` then in OBS: Tools > Scripts > + and pick FOLDER/dreamcam_obs.py"
    if install is None or install.script is None:
        where = f"the scene collection {install.collection!r}" if install else "OBS (no scene collection yet)"
        return [Check("OBS panel", False, f"not loaded in {where}", copy, optional=True),
                check_obs_python(folder, None, platform)]
    if not install.script.is_file():
        panel = Check("OBS panel", False, f"OBS loads {install.script}, which is missing", copy, optional=True)
    elif not install.schema_beside:
        panel = Check("OBS panel", False, f"{obs_setup.SCHEMA_NAME} is missing beside {install.script}", copy,
                      optional=True)
    else:
        panel = Check("OBS panel", True, f"{install.script} in the scene collection {install.collection!r}",
                      optional=True)
    return [panel, check_obs_python(folder, install, platform)]


def check_obs_python(folder, install, platform: str = sys.platform) -> Check:
    from . import obs_setup

    script_dir = install.script.parent if install is not None and install.script is not None else None
    vendor_cmd = (f'`python3 -m pip install --target "{script_dir / obs_setup.VENDOR_DIR}" obsws-python`'
                  if script_dir is not None else
                  "`python3 -m pip install --target FOLDER/dreamcam_vendor obsws-python` (FOLDER: the panel's)")
    if install is not None and install.vendor is not None:
        return Check("OBS's Python", True, f"obsws-python in {install.vendor}", optional=True)
    if not (platform.startswith("win") or platform == "darwin"):
        has = obs_setup.system_python_has_obsws()
        if has:
            return Check("OBS's Python", True, "the system python3 (OBS's on Linux) has obsws-python", optional=True)
        return Check("OBS's Python", False, "OBS's Python (the system python3) cannot import obsws-python"
                     if has is False else "no /usr/bin/python3 found (OBS's Python on Linux)",
                     f"put it next to the panel (works on Debian 12, in venvs and with Flatpak): {vendor_cmd}",
                     optional=True)
    version = obs_setup.obs_version(folder)
    low, high = obs_setup.python_range(version)
    allowed = f"64-bit Python {low[0]}.{low[1]} to {high[0]}.{high[1]}"
    obs_name = "this OBS" if version is None else f"OBS {version[0]}.{version[1]}"
    python = obs_setup.windows_python(folder)
    if python is None:
        return Check("OBS's Python", False, "Tools > Scripts > Python Settings is empty: OBS loads no Python",
                     f"install {allowed} (what {obs_name} loads and obsws-python needs) from python.org and set "
                     "its folder there", optional=True)
    found = obs_setup.python_version_of(python)
    if found is not None and not low <= found <= high:
        return Check("OBS's Python", False, f"{python} is Python {found[0]}.{found[1]}",
                     f"{obs_name} with obsws-python needs {allowed}: install one and set its folder in Tools > "
                     "Scripts > Python Settings", optional=True)
    exe = python / ("python.exe" if platform.startswith("win") else "bin/python3")
    sites = list(python.glob("Lib/site-packages/obsws_python")) + list(python.glob("lib/python3*/site-packages/obsws_python"))
    if sites:
        return Check("OBS's Python", True, f"{python} has obsws-python", optional=True)
    return Check("OBS's Python", False, f"{python} has no obsws-python", f'`"{exe}" -m pip install obsws-python`',
                 optional=True)


def check_running_app(port: int | None = None) -> Check | None:
    """A Dreamcam app running here (control port): its engine and whether its step runs as CUDA
    graphs. None when no app answers."""
    from .control_server import DEFAULT_PORT, send_event
    from .messages import encode

    try:
        reply = send_event(encode("hello"), port or DEFAULT_PORT, timeout=1.0)
    except (ConnectionError, OSError, ValueError):
        return None
    if not reply.get("ok"):  # e.g. unauthorized: this install's control token is not the app's
        return Check("running app", False, f"answers on port {port or DEFAULT_PORT} but refused: "
                     f"{reply.get('error', '?')}", "see docs/control-protocol.md (the control token)", optional=True)
    status = reply.get("status") or {}
    graph = status.get("graph") or ""
    detail = f"engine {status.get('engine', '?')}, {status.get('infer_fps', 0):.0f} fps processed"
    if graph:
        return Check("running app", False, f"{detail}; {graph}",
                     "restart it with `dreamcam run -v` to see the capture error in the log", optional=True)
    return Check("running app", True, detail, optional=True)


def run_checks(obs_host: str | None = None, obs_port: int | None = None,
               obs_password: str | None = None) -> list[Check]:
    checks = [check_python(), *check_torch(), check_tensorrt(), check_engine(), check_vcam(), *check_capture(),
              check_obs(obs_host, obs_port, obs_password), *check_obs_panel()]
    running = check_running_app()
    return checks + ([running] if running else [])
