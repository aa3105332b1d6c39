"""The `dreamcam` command line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .cli_options import setting_options
from .conditioning import absolute_source, slot_options
from .schema import app_fields, field, from_text, live_fields, unknown_setting
from .settings import STREAM_FIELDS, SettingsError

app = typer.Typer(
    help="Dreamcam: real-time diffusion on your screen or camera, published as a virtual webcam.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
)
midi_app = typer.Typer(help="MIDI controllers: list the input ports, learn a mapping (docs/control.md).",
                       no_args_is_help=True)
presets_app = typer.Typer(help="Save, list, show and delete named presets (prompt + parameters).",
                          no_args_is_help=True)
app.add_typer(presets_app, name="preset")
app.add_typer(midi_app, name="midi")
console = Console(emoji=False)  # user text such as camera:abc: must print as typed, not as an emoji
err = Console(stderr=True, emoji=False)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)  # one line
    raise typer.Exit(code)


def _size(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    if not text:
        return None, None
    w, _, h = text.lower().partition("x")
    try:
        return int(w), int(h or w)
    except ValueError:
        _fail(f"--size: expected WIDTH or WIDTHxHEIGHT, e.g. 512 or 768x432, got {text!r}")
        raise


# ---- run -------------------------------------------------------------------------------------
@app.command()
@setting_options()
def run(
    size: Optional[str] = typer.Option(None, help=f"Size at start: 512 or WIDTHxHEIGHT \\[{field('width').allowed()}]. "
                                       "The camera keeps it; the diffusion size changes live (width, height).",
                                       rich_help_panel="Output (at start)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with \\[app] and \\[stream] tables."),
    obs_camera: Optional[str] = typer.Option(None, help="With --obs: add a video capture source showing this device (e.g. 'OBS Virtual Camera') to OBS's current scene.",
                                             rich_help_panel="OBS (at start)"),
    web_host: str = typer.Option("127.0.0.1", help="Address the control page listens on; anything but 127.0.0.1 lets other machines reach it (they still need the token).",
                                 rich_help_panel="Control (at start)"),
    frames: Optional[int] = typer.Option(None, help="Stop after writing this many frames (file, image and null sinks)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file (or the frames in an images folder)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details."),
    controlnet: Optional[List[str]] = typer.Option(
        None, "--controlnet", help="PREPROCESSOR:SOURCE\\[@SCALE], repeatable: fills controlnet_1, _2, _3 in order, "
                                   "e.g. canny:lllyasviel/sd-controlnet-canny@0.8.",
        rich_help_panel="ControlNet (live)"),
    lora: Optional[List[str]] = typer.Option(
        None, "--lora", help="SOURCE\\[@WEIGHT], repeatable: fills lora_1 to lora_4 in order, e.g. style.safetensors@0.7.",
        rich_help_panel="LoRA (live)"),
    **settings: Any,
) -> None:
    """Capture, transform and publish until Ctrl+C. Every setting has an option (see the schema,
    plugin/schema.py); options given win over the config file, which wins over the defaults."""
    from . import config as cfg
    from .stop_signals import StopSignals

    stop = StopSignals().install()  # first: a Ctrl+C from here on is never lost (the process ends with run)
    from .live_status import setup_logging  # noqa: E402 - after the signals, on purpose

    setup_logging(verbose)  # the OBS connection and applied changes show even without -v
    width, height = _size(size)
    if frames is not None and frames < 1:
        _fail(f"--frames: must be 1 or more (leave it out to run until Ctrl+C), got {frames}")
    if settings.get("obs_password"):
        err.print("warning: --obs-password can be read by other users of this machine in the process list; "
                  "set the DREAMCAM_OBS_PASSWORD environment variable instead.", highlight=False, markup=False)
    try:
        for name, text in settings.items():
            if text is not None and field(name).type == "int_list":
                settings[name] = from_text(name, text)  # "32,45"
        settings.update(slot_options("controlnet", controlnet or [], settings))
        settings.update(slot_options("lora", lora or [], settings))
        cli_app = {f.name: settings.get(f.name) for f in app_fields()}
        cli_stream = {f.name: settings.get(f.name) for f in live_fields()}
        cli_stream.update(width=width, height=height)
        file_app, file_stream = cfg.load_file(config) if config else ({}, {})
        app_settings = cfg.build_app_settings(file_app, cli_app)
        stream_settings = cfg.build_stream_settings(file_stream, cli_stream)
        midi = _midi_mapping(app_settings.midi_map, config)
    except SettingsError as exc:
        _fail(str(exc))
        return
    _run_app(app_settings, stream_settings, obs=app_settings.obs_enabled, frames=frames, obs_camera=obs_camera,
             overwrite=overwrite, stop=stop, midi=midi, web_host=web_host)


def _midi_mapping(midi_map: str, config: Optional[Path]):
    """The MIDI mapping of --midi-map, else of the config file's [midi] table, else None."""
    if not midi_map and not config:
        return None
    from .midi_map import load_mapping, parse_mapping, read_table

    if midi_map:
        return load_mapping(midi_map)
    table = read_table(config)
    return None if table is None else parse_mapping(table, f"{config.name}: midi")


def _run_app(app_settings, stream_settings, *, obs: bool, frames: Optional[int],
             obs_camera: Optional[str] = None, build=None, overwrite: bool = False, stop=None,
             midi=None, web_host: str = "127.0.0.1") -> None:
    """`build(app_settings, stream_settings, progress=...)` makes the processor (default: the
    pipeline's build_processor). `stop`: the StopSignals installed by the caller (else installed
    here for the call)."""
    from .stop_signals import StopSignals

    own = stop is None
    stop = stop or StopSignals().install()
    try:
        _run_stoppable(app_settings, stream_settings, obs=obs, frames=frames, obs_camera=obs_camera, build=build,
                       overwrite=overwrite, stop=stop, midi=midi, web_host=web_host)
    finally:
        if own:
            stop.restore()


def _interrupted(stop) -> None:
    err.print("interrupted while loading the model; nothing was started.", highlight=False, markup=False)
    raise typer.Exit(stop.exit_code)


def _run_stoppable(app_settings, stream_settings, *, obs: bool, frames: Optional[int], obs_camera: Optional[str],
                   build, overwrite: bool, stop, midi=None, web_host: str = "127.0.0.1") -> None:
    from rich.live import Live

    from .app import DreamcamApp
    from .live_status import status_line
    from .pipeline import build_processor
    from .sinks import SinkError
    from .sources import SourceError

    dream = None
    try:
        osc_feedback = _osc_checks(app_settings)  # a taken OSC port fails now, not after the model load
        if app_settings.web_port:
            _web_service().check_port_free(app_settings.web_port, web_host)  # before the model load
        dream = DreamcamApp(app_settings, stream_settings, max_frames=frames, overwrite=overwrite)
        if app_settings.control_port:  # serves from now: a second app fails here, not after the load
            from .control_server import ControlServer

            control = ControlServer(dream.store, dream.board, app_settings.control_port)
            control.start()  # changes sent during the load apply to the store the stream starts from
            dream.add_service(control, started=True)
        dream.open_devices()  # a missing camera or virtual camera fails now, not after the model load
    except (SourceError, SinkError, OSError) as exc:
        if dream is not None:
            dream.stop()
        _fail(str(exc), 1)
        return
    try:
        with stop.interruptible():  # a stop request now (or already made) ends the load at once
            processor = _build_with_progress(build or build_processor, app_settings, stream_settings)
    except BaseException as exc:  # model errors carry their own fix
        dream.stop()
        if isinstance(exc, KeyboardInterrupt) or stop.requested.is_set():
            _interrupted(stop)
        _fail(f"could not build the pipeline: {exc}", 1)
        return
    if stop.requested.is_set():  # a library swallowed the interrupt: it still counts
        dream.stop()
        _interrupted(stop)
    try:
        dream.use_processor(processor)
        _add_services(dream, app_settings, obs, obs_camera)
        _add_controllers(dream, app_settings, osc_feedback, midi)
        page = _add_web_page(dream, app_settings, web_host)
        dream.start()
    except (SourceError, SinkError, OSError, RuntimeError) as exc:
        dream.stop()
        _fail(str(exc), 1)
        return
    sink_name = getattr(dream.sink, "device_name", "") or app_settings.sink
    console.print(f"[bold]dreamcam[/bold]: {escape(app_settings.source)} -> {escape(sink_name)} "
                  f"({'x'.join(map(str, dream.output_size))}, engine {processor.engine_name}). "
                  "Ctrl+C stops.")
    if page is not None:
        console.print(f"control page: {page.url}", highlight=False, markup=False, soft_wrap=True)
    try:
        with Live(status_line(dream.board.latest()), console=console, refresh_per_second=2, transient=True) as live:
            while not stop.requested.wait(0.5):
                live.update(status_line(dream.board.latest()))
                if dream.runner and dream.runner.finished.is_set():
                    break
    finally:
        dream.stop()
    _report_end(dream, sink_name)


def _report_end(dream, sink_name: str) -> None:
    """The last line: how many frames are really in the output, or why the output failed (exit 1)."""
    written = getattr(dream.sink, "frames_written", None)
    guard = dream.runner.sink_guard if dream.runner else None
    if guard is not None and guard.error:
        _fail(guard.error if guard.failed else f"{guard.error} (still failing at stop; "
              f"{written if written is not None else '?'} frames written)", 1)
    console.print("stopped." if written is None else f"stopped: {written} frames written to {escape(sink_name)}.",
                  highlight=False)


def _build_with_progress(build, app_settings, stream_settings):
    """Run `build` under a progress bar that moves one step per pipeline stage."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    stages = 4  # load the model, build the engine, engine ready, prepare the stream
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("loading the model", total=stages)
        done = [0]

        def step(text: str) -> None:
            logging.getLogger("dreamcam.plugin.cli").info("%s", text)  # with --verbose: each stage in the log
            bar.update(task, description=text, completed=min(done[0], stages - 1))
            done[0] += 1

        processor = build(app_settings, stream_settings, progress=step)
        bar.update(task, completed=stages)
    return processor


def _add_services(dream, app_settings, obs: bool, obs_camera: Optional[str] = None) -> None:
    if obs:
        try:
            from .obs_bridge import ObsBridge
        except ImportError:
            _fail("--obs: the OBS bridge is not available in this installation (pip install \"dreamcam[obs]\")")
            return
        dream.add_service(ObsBridge(dream.store, dream.board, app_settings.obs_host, app_settings.obs_port,
                                    app_settings.obs_password or None, add_camera=obs_camera))


def _osc_checks(app_settings):
    """The OSC feedback target, after checking (before the model load) that OSC can start."""
    if not app_settings.osc_port:
        return None
    try:
        from .osc_server import check_port_free, parse_target
    except ImportError:
        _fail("--osc-port: OSC is not available in this installation (pip install \"dreamcam[osc]\")")
        return None
    check_port_free(app_settings.osc_port, app_settings.osc_host)
    try:
        return parse_target(app_settings.osc_feedback) if app_settings.osc_feedback else None
    except SettingsError as exc:
        _fail(str(exc))
        return None


def _add_controllers(dream, app_settings, osc_feedback, midi) -> None:
    """The OSC server and the MIDI input (docs/control.md)."""
    if app_settings.osc_port:
        from .osc_server import OscServer

        dream.add_service(OscServer(dream.store, dream.board, app_settings.osc_port, app_settings.osc_host,
                                    feedback=osc_feedback))
        console.print(f"OSC: udp {escape(app_settings.osc_host)}:{app_settings.osc_port} "
                      "(addresses in docs/control.md)", highlight=False)
    if midi is not None:
        from .midi_service import MidiInput

        dream.add_service(MidiInput(dream.store, midi))
def _web_service():
    try:
        from . import web_service
    except ImportError as exc:
        _fail(f"the control page needs {exc.name}: pip install \"dreamcam[web]\" (or turn the page off with "
              "--web-port 0)")
        raise
    return web_service


def _add_web_page(dream, app_settings, web_host: str):
    """The control page service (None when --web-port is 0)."""
    if not app_settings.web_port:
        return None
    page = _web_service().WebService(dream.store, dream.board, dream.latest_frames, app_settings, host=web_host)
    dream.add_service(page)
    if web_host in ("0.0.0.0", "::"):
        console.print(f"the control page listens on {web_host} but answers only 127.0.0.1 and localhost: to reach "
                      "it from another machine, give --web-host the address that machine will use.",
                      highlight=False, markup=False)
    elif web_host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"the control page listens on {web_host}: other machines can reach it (they still need "
                      "the token; plain HTTP, so only on a network you trust).", highlight=False, markup=False)
    return page


# ---- demo ------------------------------------------------------------------------------------
@app.command()
def demo(
    out: Path = typer.Option(Path("dreamcam-demo.mp4"), "--out", help="Video file to write."),
    frames: int = typer.Option(60, "--frames", "-n", min=1, help="Frames to write."),
    size: int = typer.Option(256, help="Frame size (square, multiple of 8)."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    prompt: Optional[str] = typer.Option(None, help="Prompt (the random-weight model ignores its meaning)."),
    side_by_side: bool = typer.Option(True, "--side-by-side/--output-only", help="Show the input left of the output."),
) -> None:
    """Offline demo: a moving test pattern through the full pipeline on a small random-weight model."""
    from dreamcam.core.loading import ModelLoadError

    from .demo import run_demo
    from .pipeline import resolve_device
    from .sinks import SinkError

    problem = field("width").range.problem(size)
    if problem:
        _fail(f"--size: {problem}")
    try:
        result = run_demo(out, frames=frames, size=size, device=resolve_device(device), prompt=prompt,
                          side_by_side=side_by_side,
                          say=lambda text: console.print(f"[dim]{escape(text)}[/dim]", highlight=False))
    except (SettingsError, ValueError, OSError, ModelLoadError, SinkError) as exc:
        _fail(str(exc), 1)
        return
    console.print(f"wrote {result.frames} frames to {escape(str(result.out))} in {result.seconds:.1f} s: "
                  f"[bold]{result.fps:.1f} frames per second[/bold] (inference {result.infer_ms:.0f} ms/frame)")
    if result.frames < frames:
        _fail(f"only {result.frames} of {frames} frames were written", 1)


# ---- devices / doctor / bench ----------------------------------------------------------------
@app.command()
def devices(probe: bool = typer.Option(True, help="Try to start each virtual camera backend.")) -> None:
    """List monitors, cameras and virtual camera backends."""
    from .devices import cameras, monitors, vcam_backends

    found, error = monitors()
    console.print("[bold]Monitors[/bold] (use --source screen:N)")
    console.print(f"  {error}" if error else "\n".join(
        f"  {m['index']}: {m['width']}x{m['height']} at {m['left']},{m['top']}" + ("  (all together)" if m["index"] == 0 else "")
        for m in found), highlight=False, markup=False)
    cams, error = cameras()
    console.print("[bold]Cameras[/bold] (use --source camera:N)")
    console.print(f"  {error}" if error else ("\n".join(
        f"  {c['index']}: {c.get('name') or 'camera'} {c['width']}x{c['height']} {c['fps']:.0f} fps" for c in cams) or "  none found"), highlight=False, markup=False)
    backends, error = vcam_backends(probe)
    console.print("[bold]Virtual camera backends[/bold] (use --sink vcam:BACKEND)")
    if error:
        console.print(f"  {error}", markup=False)
    for b in backends:
        state = "works" if b["works"] else ("not checked" if b["works"] is None else "unavailable")
        console.print(f"  {b['backend']}: {state} {b['detail']}", highlight=False, markup=False)
    if not error and not any(b["works"] for b in backends) and probe:
        from .sinks.vcam import install_hint

        console.print(f"  to fix: {install_hint()}", highlight=False, markup=False)


@app.command()
def doctor(obs_host: Optional[str] = typer.Option(None, help="OBS WebSocket host (default 127.0.0.1 or DREAMCAM_OBS_HOST)."),
           obs_port: Optional[int] = typer.Option(None, help="OBS WebSocket port (default 4455 or DREAMCAM_OBS_PORT)."),
           obs_password: Optional[str] = typer.Option(None, help="OBS WebSocket password (or DREAMCAM_OBS_PASSWORD).")) -> None:
    """Check GPU, torch CUDA, TensorRT, virtual camera and OBS: what works and what to fix."""
    from .doctor import fix_lines, run_checks

    checks = run_checks(obs_host, obs_port, obs_password)
    for check in checks:
        mark = "[green]ok[/green]  " if check.ok else ("[yellow]--[/yellow]  " if check.optional else "[red]FIX[/red] ")
        console.print(f"{mark}{escape(check.name)}: {escape(check.detail)}", highlight=False, soft_wrap=True)
        if not check.ok and check.fix:
            for line in fix_lines(check.fix):  # commands alone on their lines, never wrapped
                console.print(f"    {'  ' if line.startswith('  ') else '-> '}{escape(line.strip())}",
                              highlight=False, soft_wrap=True)
    if any(not c.ok and not c.optional for c in checks):
        raise typer.Exit(1)


def _checkout_root() -> Optional[Path]:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "bench" / "run.py").is_file():
            return base
    return None


def bench_results_dir() -> Path:
    """Where `dreamcam bench` keeps its JSON results: the user data folder, not the checkout."""
    import platformdirs

    return Path(platformdirs.user_data_dir("dreamcam", appauthor=False)) / "bench"


def _bench_args(args: list[str]) -> tuple[list[str], Optional[Path]]:
    """The arguments for bench.run (which runs inside the checkout): --json and --out paths made
    absolute against the user's folder, and a --json in the results folder when none is given."""
    out: list[str] = []
    json_path: Optional[Path] = None
    items = iter(args)
    for arg in items:
        name, eq, value = arg.partition("=")
        if name in ("--json", "--out"):
            value = value if eq else next(items, "")
            path = Path(value).expanduser().absolute() if value else None
            json_path = path if name == "--json" else json_path
            out += [name, str(path) if path else value]
        else:
            out.append(arg)
    if json_path is None and not {"-h", "--help"} & set(args):
        from datetime import datetime

        json_path = bench_results_dir() / f"bench-{datetime.now():%Y%m%d-%H%M%S}.json"
        out += ["--json", str(json_path)]
    return out, json_path


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmark (python -m bench.run from a checkout); extra arguments pass through.
    The JSON results go to the user data folder unless --json PATH is given."""
    root = _checkout_root()
    if root is None:
        _fail("the benchmark lives in bench/ of a source checkout: clone the repository and run "
              "`python -m bench.run` there (or `dreamcam bench` from that folder)")
        return
    args, json_path = _bench_args(list(ctx.args))
    code = subprocess.call([sys.executable, "-m", "bench.run", *args], cwd=root)
    if json_path is not None and json_path.is_file():
        console.print(f"bench results: {json_path}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


# ---- set -------------------------------------------------------------------------------------
def _pairs(items: Optional[List[str]]) -> dict[str, Any]:
    """FIELD=VALUE pairs read by each field's type (prompt=123 is text, seed=NaN is refused)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(f"expected FIELD=VALUE, got {item!r}")
        if key not in STREAM_FIELDS:  # the app would refuse them; say so before connecting
            _fail(f"{key}: {unknown_setting(key, STREAM_FIELDS)}")
        out[key] = absolute_source(key, from_text(key, value))  # a file here is a file there
    return out


@app.command("set")
def set_(
    changes: List[str] = typer.Argument(None, help='FIELD=VALUE pairs, e.g. prompt="a cat" strength=0.4 paused=true'),
    preset: Optional[str] = typer.Option(None, help="Apply a saved preset."),
    port: int = typer.Option(field("control_port").default, help="Control port of the running app."),
    host: str = typer.Option("127.0.0.1", help="Host of the running app."),
) -> None:
    """Send a settings update to a running app (its control server)."""
    from .control_server import send_settings
    from .secret import SecretError

    try:
        update = _pairs(changes)
    except SettingsError as exc:
        _fail(str(exc))
        return
    if preset:
        update["preset"] = preset
    if not update:  # nothing to change: show what is in force
        _print_state(port, host)
        return
    try:
        reply = send_settings(update, port=port, host=host)  # with this install's control token
    except (ConnectionError, SecretError) as exc:
        _fail(str(exc), 1)
        return
    if not reply.get("ok"):
        _fail(reply.get("error", "rejected"), 1)
    console.print("applied: " + ", ".join(f"{k}={reply['settings'].get(k)!r}" for k in update), highlight=False, markup=False)
    if any(field(k).syntax for k in update if k != "preset"):  # a ControlNet, IP-Adapter or LoRA source
        console.print("sources load in the background; `dreamcam status` says when they are in use, or why not",
                      highlight=False, markup=False)


@app.command()
def status(
    port: int = typer.Option(field("control_port").default, help="Control port of the running app."),
    host: str = typer.Option("127.0.0.1", help="Host of the running app."),
) -> None:
    """Print the settings in force and the status of a running app.

    `dreamcam set` with no arguments prints the same."""
    _print_state(port, host)


def _print_state(port: int, host: str) -> None:
    from .control_server import get_state
    from .live_status import state_lines
    from .secret import SecretError

    try:
        reply = get_state(port=port, host=host)  # with this install's control token
    except (ConnectionError, SecretError) as exc:
        _fail(str(exc), 1)
        return
    console.print("\n".join(state_lines(reply)), highlight=False, markup=False, soft_wrap=True)


@app.command("token")
def token(
    rotate: bool = typer.Option(False, "--rotate", help="Make a new token (the old one stops working at once)."),
    path: bool = typer.Option(False, "--path", help="Print where the token file is instead."),
) -> None:
    """Print the control token that `dreamcam set`, Stream Deck plugins and scripts send to the
    control port (docs/control-protocol.md); it is made on first use."""
    from . import secret

    if path:
        console.print(str(secret.secret_path()), highlight=False, markup=False, soft_wrap=True)
        return
    try:
        value = secret.rotate() if rotate else secret.load_or_create()
    except OSError as exc:
        _fail(str(exc), 1)
        return
    print(value)
    if rotate:
        err.print("made a new control token; a running app uses it from its next message: "
                  "update the controllers that hold the old one.", highlight=False, markup=False)


# ---- presets ---------------------------------------------------------------------------------
@presets_app.command("save")
def preset_save(
    name: str = typer.Argument(..., help="Preset name."),
    values: List[str] = typer.Argument(None, help='FIELD=VALUE pairs, e.g. prompt="oil painting" strength=0.6'),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Take \\[stream] values from this TOML file."),
) -> None:
    """Save a preset from FIELD=VALUE pairs (and/or a config file's [stream] table)."""
    from . import config as cfg

    try:
        base = cfg.load_file(config)[1] if config else {}
        given = _pairs(values)
        settings = cfg.build_stream_settings(base, given)
        path = cfg.save_preset(name, settings)
    except SettingsError as exc:
        _fail(str(exc))
        return
    console.print(f"saved preset {name!r} to {path}", highlight=False, markup=False)
    left_out = sorted(k for k in {**base, **given} if k not in cfg.PRESET_FIELDS and k != "preset")
    if left_out:  # e.g. LoRA and ControlNet sources: presets keep numbers and prompts, not files
        console.print(f"not in presets (not saved): {', '.join(left_out)}", highlight=False, markup=False)


@presets_app.command("list")
def preset_list() -> None:
    """List saved presets."""
    from . import config as cfg

    names = cfg.list_presets()
    console.print("\n".join(names) if names else f"no presets yet in {cfg.presets_dir()}", highlight=False, markup=False)


@presets_app.command("show")
def preset_show(name: str) -> None:
    """Print a preset's values."""
    from . import config as cfg

    try:
        console.print_json(json.dumps(cfg.load_preset(name)))
    except SettingsError as exc:
        _fail(str(exc))


@presets_app.command("delete")
def preset_delete(name: str) -> None:
    """Delete a preset."""
    from . import config as cfg

    try:
        deleted = cfg.delete_preset(name)
    except SettingsError as exc:
        _fail(str(exc))
        return
    if not deleted:
        _fail(f"no preset named {name!r}")
    console.print(f"deleted preset {name!r}", markup=False)


# ---- midi ------------------------------------------------------------------------------------
def _midi_api(api: Optional[str]) -> Optional[str]:
    from .midi_map import APIS

    if api and api not in APIS:
        _fail(f"--api: must be one of {', '.join(APIS)}, got {api!r}")
    return APIS[api] if api else None


@midi_app.command("list")
def midi_list(api: Optional[str] = typer.Option(None, help="alsa | jack | coremidi | windows (default: the system's).")) -> None:
    """List the MIDI input ports (use a part of a name as `device` in the \\[midi] table)."""
    from .midi_service import MidiUnavailable, input_names

    try:
        names = input_names(_midi_api(api))
    except MidiUnavailable as exc:
        _fail(str(exc), 1)
        return
    console.print("\n".join(names) if names else "no MIDI input ports (is the controller plugged in?)",
                  highlight=False, markup=False)


@midi_app.command("learn")
def midi_learn(
    target: str = typer.Argument(..., help='What the control should do: a setting (strength, paused, ...) or an action '
                                           '(preset:NAME, preset:next, preset:previous, seed:random, FIELD=VALUE).'),
    map_file: Optional[Path] = typer.Option(None, "--map", help="Mapping file to write (default: midi.toml in the config folder)."),
    device: str = typer.Option("", help="Part of the input port's name (default: the first port)."),
    api: Optional[str] = typer.Option(None, help="alsa | jack | coremidi | windows (default: the system's)."),
    timeout: float = typer.Option(60.0, help="Give up after this many seconds."),
) -> None:
    """Move a knob, fader or pad: its CC or note is printed and mapped to TARGET in the file."""
    from . import config as cfg
    from .midi_map import check_learn_target, learn, write_entry
    from .midi_service import MidiUnavailable, listen

    path = map_file or cfg.config_dir() / "midi.toml"
    try:
        check_learn_target(target)
        name, messages = listen(device, _midi_api(api), timeout)
        console.print(f"listening to {name}: move the control for {target} (Ctrl+C stops)", highlight=False,
                      markup=False)
        kind, number = learn(messages, target)
        write_entry(path, kind, number, target, device=device or None)
    except (MidiUnavailable, SettingsError) as exc:
        _fail(str(exc), 1)
        return
    console.print(f"{kind} {number} -> {target}: written to {path} (use it: dreamcam run --midi-map {path})",
                  highlight=False, markup=False, soft_wrap=True)


# ---- tray ------------------------------------------------------------------------------------
@app.command()
def tray(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with \\[app] and \\[stream] tables (default: dreamcam.toml in the config folder)."),
    obs: bool = typer.Option(False, "--obs", help="Also connect to OBS (obs-websocket) for live control."),
    autostart: bool = typer.Option(True, "--autostart/--no-autostart", help="Start the stream right away."),
) -> None:
    """Run Dreamcam with a system-tray icon (start/stop, pause, presets, similarity filter, quit)."""
    from .tray import run_tray

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_tray(config, obs, autostart=autostart)
    except SettingsError as exc:
        _fail(str(exc))


# ---- obs-script ------------------------------------------------------------------------------
@app.command("obs-script")
def obs_script(
    copy_to: Optional[Path] = typer.Option(None, "--copy-to", help="Copy the script and its schema into this folder."),
) -> None:
    """Where the OBS panel script is (load it in OBS: Tools > Scripts > +; dreamcam_schema.json must
    stay beside it). See docs/obs.md."""
    from .obs_scene import copy_obs_script, obs_schema_path, obs_script_path

    for needed in (obs_script_path(), obs_schema_path()):
        if not needed.is_file():
            _fail(f"the OBS script's {needed.name} is missing from this installation ({needed})", 1)
    path = copy_obs_script(copy_to) if copy_to else obs_script_path()
    console.print(str(path), highlight=False, markup=False)


def _unwrap_docstrings(*typers: typer.Typer) -> None:
    """Command help from docstrings as flowing paragraphs: rich help keeps a docstring's line
    breaks, which cut sentences and commands at odd places in an 80-column terminal."""
    import inspect

    for group in typers:
        for command in group.registered_commands:
            if command.help is None and command.callback is not None:
                doc = inspect.getdoc(command.callback) or ""
                command.help = "\n\n".join(" ".join(part.split()) for part in doc.split("\n\n"))


_unwrap_docstrings(app, presets_app)


def main() -> None:
    # Library chatter (weights loading bars, config notes) hides our own lines; --verbose logs ours.
    for name, value in (("OPENCV_LOG_LEVEL", "ERROR"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("DIFFUSERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)
    app()


if __name__ == "__main__":
    main()
