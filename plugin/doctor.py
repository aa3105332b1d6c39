"""`dreamcam doctor`: what works on this machine and what to fix, one check per line."""

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


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, sys.version.split()[0], "" if ok else "install Python 3.10 or newer")


def check_torch() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", False, "not installed", "pip install torch (a CUDA build from pytorch.org for GPUs)")]
    checks = [Check("torch", True, torch.__version__)]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        checks.append(Check("CUDA GPU", True, f"{name}, CUDA {torch.version.cuda}"))
        checks.append(check_cuda_graphs())
    else:
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU visible to CUDA"
        checks.append(Check("CUDA GPU", False, why,
                            "install an NVIDIA driver and a CUDA build of torch, e.g. pip install torch "
                            "--index-url https://download.pytorch.org/whl/cu128 (the CPU works for the demo only)"))
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
                     'pip install "dreamcam[tensorrt]" (optional: the fastest engine)', optional=True)
    return Check("TensorRT", True, tensorrt.__version__, optional=True)


def check_vcam() -> Check:
    from .devices import vcam_backends
    from .sinks.vcam import install_hint

    backends, error = vcam_backends(probe=True)
    if error:
        return Check("virtual camera", False, error, "pip install pyvirtualcam")
    working = [b["backend"] for b in backends if b["works"]]
    if working:
        return Check("virtual camera", True, "backend " + ", ".join(working))
    tried = ", ".join(b["backend"] for b in backends) or "none registered"
    return Check("virtual camera", False, f"no backend starts (tried: {tried})", install_hint())


def check_capture() -> list[Check]:
    from .devices import monitors

    found, error = monitors()
    checks = [Check("screen capture", not error, error or f"{max(0, len(found) - 1)} monitor(s)",
                    "" if not error else "needs a desktop session (DISPLAY on Linux) and pip install mss",
                    optional=True)]
    try:
        import cv2

        checks.append(Check("OpenCV (cameras)", True, cv2.__version__, optional=True))
    except ImportError:
        checks.append(Check("OpenCV (cameras)", False, "not installed", "pip install opencv-python", optional=True))
    return checks


def check_obs(host: str | None = None, port: int | None = None, password: str | None = None) -> Check:
    """Can we reach OBS's WebSocket server, and does it take our password?"""
    try:
        import obsws_python
    except ImportError:
        return Check("OBS WebSocket", False, "obsws-python is missing", 'pip install "dreamcam[obs]"', optional=True)
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


def check_running_app(port: int | None = None) -> Check | None:
    """A Dreamcam app running here (control port): its engine and whether its step runs as CUDA
    graphs. None when no app answers."""
    from .control_server import DEFAULT_PORT, send_event
    from .messages import encode

    try:
        reply = send_event(encode("hello"), port or DEFAULT_PORT, timeout=1.0)
    except (ConnectionError, OSError, ValueError):
        return None
    status = reply.get("status") or {}
    graph = status.get("graph") or ""
    detail = f"engine {status.get('engine', '?')}, {status.get('infer_fps', 0):.0f} fps processed"
    if graph:
        return Check("running app", False, f"{detail}; {graph}",
                     "restart it with `dreamcam run -v` to see the capture error in the log", optional=True)
    return Check("running app", True, detail, optional=True)


def run_checks(obs_host: str | None = None, obs_port: int | None = None,
               obs_password: str | None = None) -> list[Check]:
    checks = [check_python(), *check_torch(), check_tensorrt(), check_vcam(), *check_capture(),
              check_obs(obs_host, obs_port, obs_password)]
    running = check_running_app()
    return checks + ([running] if running else [])
