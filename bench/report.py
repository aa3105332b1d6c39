"""Markdown report of a benchmark run (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

from .start_time import PHASES


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _best(results: dict, scenario: str) -> tuple[str, dict] | None:
    """The variant with the highest host-to-host (else device) fps for a scenario."""
    best = None
    for v in results.get("variants", []):
        r = v.get("scenarios", {}).get(scenario)
        if not r or "device" not in r:
            continue
        fps = (r.get("host_to_host") or r["device"])["fps"]
        if best is None or fps > best[2]:
            best = (v["variant"], r, fps)
    return (best[0], best[1]) if best else None


def _best_in_flight(results: dict) -> tuple[str, str, str, dict] | None:
    """(variant, scenario, lanes, stats) with the highest host-to-host fps with frames in flight."""
    best = None
    for v in results.get("variants", []):
        for name, r in v.get("scenarios", {}).items():
            for lanes, st in r.get("in_flight", {}).items():
                if best is None or st["fps"] > best[3]["fps"]:
                    best = (v["variant"], name, lanes, st)
    return best


def in_flight_rows(results: dict) -> list[str]:
    rows = []
    for v in results.get("variants", []):
        for name, r in v.get("scenarios", {}).items():
            for lanes, st in r.get("in_flight", {}).items():
                rows.append(f"| {name} | {v['variant']} | {lanes} ({st['lanes_used']} used) | {_f(st['fps'])} | "
                            f"{_f(st['latency_p50_ms'], 2)} | {_f(st['latency_p99_ms'], 2)} |")
    return rows


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    one = _best(results, "img2img-1step-512")
    ref = results.get("reference", {}).get("pil", {}).get("fps")
    if one:
        label, r = one
        h2h = r.get("host_to_host", {}).get("fps")
        rows.append((">= 300 fps, 1-step img2img 512, host uint8 -> host uint8, one frame at a time",
                     f"{_f(h2h)} fps ({label})", h2h is not None and h2h >= 300))
        flight = _best_in_flight(results)
        if flight:
            fl_label, fl_name, fl_lanes, fl = flight
            rows.append((">= 300 fps host -> host with frames in flight (latency stated)",
                         f"{_f(fl['fps'])} fps ({fl_name}, {fl_lanes} in flight, latency p50 "
                         f"{_f(fl['latency_p50_ms'], 2)} ms; {fl_label})", fl["fps"] >= 300))
            if ref:
                rows.append((">= 20x diffusers img2img (PIL in/out), frames in flight", f"{fl['fps'] / ref:.1f}x",
                             fl["fps"] / ref >= 20))
        if ref and h2h:
            rows.append((">= 20x diffusers img2img (PIL in/out)", f"{h2h / ref:.1f}x ({_f(ref)} fps)", h2h / ref >= 20))
        st = r.get("host_to_host") or r["device"]
        rows.append(("p99 < 1.5 x p50", f"p50 {_f(st['p50_ms'], 2)} ms, p99 {_f(st['p99_ms'], 2)} ms",
                     st["p99_ms"] < 1.5 * st["p50_ms"]))
        mem = r.get("peak_mem_gb")
        rows.append(("GPU memory < 6 GB at 512x512", f"{_f(mem, 2)} GB peak allocated", mem is not None and mem < 6))
        for v in results.get("variants", []):
            sc = v.get("scenarios", {})
            a, b, c = sc.get("img2img-1step-512", {}), sc.get("img2img-2step-512", {}), sc.get("self-1step-512", {})
            if "device" in a and "device" in b:
                ratio = b["device"]["fps"] / (a["device"]["fps"] / 2)
                rows.append((f"2-step stream batch >= 1.4 x two sequential 1-step ({v['variant']})", f"{ratio:.2f}x",
                             ratio >= 1.4))
            ip = sc.get("ip-adapter-1step-512", {})
            if "host_to_host" in a and "host_to_host" in ip:
                loss = 1 - ip["host_to_host"]["fps"] / a["host_to_host"]["fps"]
                rows.append((f"IP-Adapter within 10% of the plain stream, host -> host ({v['variant']})",
                             f"{loss * 100:.1f}% slower, {ip.get('ip_live_recaptures')} recaptures on live "
                             f"scale/image changes", loss <= 0.10))
            if "device" in a and "device" in c:
                loss = 1 - c["device"]["fps"] / a["device"]["fps"]
                rows.append((f"self guidance within 10% of none ({v['variant']})", f"{loss * 100:.1f}% slower",
                             loss <= 0.10))
    return rows


def sdxl_rows(results: dict) -> list[str]:
    """SDXL-Turbo scenarios: host to host one at a time and in flight, with the graph status of each."""
    rows = []
    for v in results.get("variants", []):
        for name, r in v.get("scenarios", {}).items():
            if not name.startswith("sdxl-"):
                continue
            if "device" not in r:
                rows.append(f"| {name} | {v['variant']} | {r.get('error') or r.get('skipped')} |||||||")
                continue
            h = r.get("host_to_host") or {}
            flight = r.get("in_flight", {})
            lanes = " / ".join(f"{_f(flight[k]['fps'])} ({_f(flight[k]['latency_p50_ms'], 1)} ms)"
                               for k in ("2", "4") if k in flight) or "-"
            errors = {r.get("graph_error")} | {st.get("graph_error") for st in flight.values()}
            failures = r.get("capture_failures", 0) + sum(st.get("capture_failures", 0) for st in flight.values())
            graph = "; ".join(e for e in errors if e) or "captured"
            rows.append(f"| {name} | {v['variant']} | {_f(h.get('fps'))} | {_f(h.get('p50_ms'), 2)} | {lanes} | "
                        f"{_f(r['device']['fps'])} | {_f(r.get('peak_mem_gb'), 2)} | {graph}, {failures} failed |")
    return rows


def variant_rows(results: dict) -> list[str]:
    """Issue 11: each engine variant against the baseline in the same run, one frame at a time."""
    rows = []
    base_fps: dict[str, float] = {}
    for v in results.get("variants", []):
        if v.get("key") == "compiled":
            base_fps = {n: r["host_to_host"]["fps"] for n, r in v.get("scenarios", {}).items() if "host_to_host" in r}
    for v in results.get("variants", []):
        if "scenarios" not in v:
            rows.append(f"| {v.get('key', '-')} | - | {v.get('error') or v.get('skipped')} ||||||||")
            continue
        for name, r in v["scenarios"].items():
            if "host_to_host" not in r:
                if "error" in r or "skipped" in r:
                    rows.append(f"| {v.get('key', '-')} | {name} | {r.get('error') or r.get('skipped')} ||||||||")
                continue
            fps = r["host_to_host"]["fps"]
            ratio = fps / base_fps[name] if base_fps.get(name) else None
            stages = r.get("stages_ms", {})
            kernels = (r.get("top_kernels") or [[None, None, None]])[0][2]
            diff = r.get("diff_vs_baseline", {})
            rows.append(f"| {v.get('key', '-')} | {name} | {_f(fps)} | {_f(ratio, 2) + 'x' if ratio else '-'} | "
                        f"{_f(stages.get('encode'), 3)} / {_f(stages.get('unet'), 3)} / {_f(stages.get('decode'), 3)} | "
                        f"{_f(kernels)} | {_f(diff.get('mean_abs'), 3)} | {_f(diff.get('max_abs'))} | "
                        f"{_f(v.get('engine_s'))}+{_f(r.get('capture_s'))} |")
    return rows


CONDITIONING_TARGETS = (("cn-canny", "one ControlNet with canny", 120.0), ("cn-depth", "one ControlNet with depth", 100.0),
                        ("cn-two", "two ControlNets (canny + depth)", 90.0))


def conditioning_targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 10 point 9: ControlNet fps, host uint8 -> host uint8, one frame at a time, and scale 0
    within 3% of the plain stream of the same variant."""
    rows: list[tuple[str, str, bool | None]] = []
    for name, what, goal in CONDITIONING_TARGETS:
        best = _best(results, name)
        if best:
            label, r = best
            fps = r.get("host_to_host", {}).get("fps")
            error = f", graph_error: {r['graph_error']}" if r.get("graph_error") else ""
            rows.append((f">= {goal:.0f} fps, {what}, 1-step 512 host -> host", f"{_f(fps)} fps ({label}{error})",
                         fps is not None and fps >= goal))
    for v in results.get("variants", []):
        sc = v.get("scenarios", {})
        zero, plain = sc.get("cn-scale0", {}).get("host_to_host"), sc.get("img2img-1step-512", {}).get("host_to_host")
        if zero and plain:
            loss = 1 - zero["fps"] / plain["fps"]
            rows.append((f"scale 0 within 3% of no ControlNet ({v['variant']})",
                         f"{zero['fps']:.1f} vs {plain['fps']:.1f} fps ({loss * 100:+.1f}% slower)", loss <= 0.03))
    return rows


def render(results: dict) -> str:
    env = results.get("env", {})
    lines = ["# Benchmarks", "",
             "Random weights with the real architectures (SD-Turbo UNet = SD 2.1 UNet, TAESD, OpenCLIP-H text; "
             "configs in `bench/configs/`), fp16. Numbers come from one run of the command below; runs on the same "
             "GPU vary by about 15%, so compare rows of one run.", "",
             f"- command: `{env.get('command', 'python -m bench.run')}`",
             f"- commit: `{env.get('commit', '?')}`" + (" (plus uncommitted changes)" if env.get("dirty") else ""),
             f"- device: {env.get('gpu', 'cpu')} (sm {env.get('sm', '-')}, {env.get('gpu_mem_gb', '-')} GB), "
             f"torch {env.get('torch')}, CUDA {env.get('cuda', '-')}, diffusers {env.get('diffusers', '-')}", ""]
    fl = results.get("floor")
    if fl:
        lines += ["## Arithmetic floor (1-step img2img, 512x512)", "",
                  f"UNet batch 1: {fl['gflop']['unet_b1']} GFLOP, TAESD encode {fl['gflop']['taesd_encode']} GFLOP, "
                  f"decode {fl['gflop']['taesd_decode']} GFLOP; total {fl['total_gflop']} GFLOP at a measured "
                  f"{fl['matmul_tflops']} TFLOP/s fp16 matmul = **{fl['floor_ms']} ms ({fl['floor_fps']} fps)**.", ""]
    ref = results.get("reference")
    if ref:
        lines += ["## Reference: diffusers StableDiffusionImg2ImgPipeline (same components, 1 step, cached prompt)", "",
                  "| I/O | fps | p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
        for k, st in ref.items():
            lines.append(f"| {k} | {_f(st['fps'])} | {_f(st['p50_ms'], 2)} | {_f(st['p99_ms'], 2)} |")
        lines.append("")
    lines += ["## Dreamcam stream (core StreamDiffusion + engine, whole step in one CUDA graph)", "",
              "All through the app's graph driver (`engines.driver.StreamDriver`). device = frames already on the GPU, "
              "one sync per frame; host->host = numpy uint8 (1xHxWx3) in, numpy uint8 out, one frame at a time; "
              "pipelined = the next frame submitted before collecting this one (one lane); core call = the same with "
              "HxWx3 frames. Throughput = no sync between frames.", "",
              "| scenario | variant | device fps | p50 ms | p99 ms | throughput fps | host->host fps | pipelined fps | "
              "core call fps | peak GB | compile+capture s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ref_fps = (ref or {}).get("pil", {}).get("fps")
    for v in results.get("variants", []):
        if "scenarios" not in v:
            lines.append(f"| - | {v.get('variant')} | {v.get('error') or v.get('skipped')} |||||||||")
            continue
        for name, r in v["scenarios"].items():
            if "device" not in r:
                lines.append(f"| {name} | {v['variant']} | {r.get('error') or r.get('skipped')} |||||||||")
                continue
            d, h = r["device"], r.get("host_to_host", {})
            per_call = r.get("frames_per_call", 1)  # frame batching: one call = fbs frames
            cell = name + (f" (**no CUDA graph**: {r['graph_error'][:80]})" if r.get("graph_error") else "")
            lines.append(
                f"| {cell} | {v['variant']} | {_f(d['fps'] * per_call)} | {_f(d['p50_ms'], 2)} | {_f(d['p99_ms'], 2)} | "
                f"{_f(r.get('device_throughput_fps', 0) * per_call)} | {_f(h.get('fps'))} | {_f(r.get('host_to_host_pipelined_fps'))} | "
                f"{_f(r.get('core_call_numpy', {}).get('fps'))} | {_f(r.get('peak_mem_gb'), 2)} | "
                f"{_f(v.get('engine_s'))}+{_f(r.get('capture_s'))} |")
    lines.append("")
    compared = variant_rows(results)
    if len(compared) > 1:
        lines += ["## Engine variants against the plain compiled engine (issue 11)", "",
                  "host->host fps one frame at a time; speed-up against `compiled` in this run; GPU ms of each stage "
                  "alone; kernels per frame (torch.profiler); difference of the uint8 output frames from `compiled`'s "
                  "for the same input frames (mean / max absolute, in levels of 255); engine build + first frame s.", "",
                  "| variant | scenario | host->host fps | vs compiled | encode / unet / decode ms | kernels | "
                  "diff mean | diff max | build+first s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *compared, ""]
    second = results.get("second_start")
    if second:
        key = second.get("variant", "compiled")
        first = next((v for v in results.get("variants", []) if v.get("key", "compiled") == key), {})
        scenarios = first.get("scenarios", {})
        one = (scenarios.get("img2img-1step-512") or scenarios.get("sdxl-img2img-1step-512")
               or next(iter(scenarios.values()), {}))
        lines += [f"Compiled engine start (`{key}`), 1-step 512: first start in this run "
                  f"{_f(first.get('engine_s'))} s engine + {_f(one.get('capture_s'))} s first frame; "
                  "second start (a fresh process, the engine cache from the first): "
                  + (f"{_f(second.get('engine_s'))} s + {_f(second.get('first_frame_s'))} s."
                     if "engine_s" in second else f"{second.get('error') or second.get('skipped')}."), ""]
        if "engine_s" in second:
            phases = ", ".join(f"{k[:-2]} {_f(second.get(k))} s" for k in PHASES if k != "first_frame_s")
            lines += [f"Second start by phase: {phases}; recompiles at the first frame: "
                      f"{second.get('recompiles_at_first_frame')}.", ""]
    app = results.get("app_e2e")
    if app:
        lines += ["## The app end to end (`dreamcam run`, random-weight SD-Turbo folder, pattern 240 fps -> null sink)", "",
                  "Medians of the app's own once-a-second status lines after warm-up (`bench/app_e2e.py`).", "",
                  "| case | fps in | inference fps | inference ms | fps out | latency ms | graph |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in app.items():
            if "fps_out" not in r:
                lines.append(f"| {name} | {r.get('error') or r.get('skipped')} ||||||")
                continue
            lines.append(f"| {name} | {_f(r['fps_in'])} | {_f(r['infer_fps'])} | {_f(r['infer_ms'])} | "
                         f"{_f(r['fps_out'])} | {_f(r['latency_ms'])} | {r.get('graph_warning') or 'captured'} |")
        lines.append("")
    sdxl = sdxl_rows(results)
    if sdxl:
        floor_1024 = results.get("floor_1024")
        lines += ["## SDXL-Turbo (SDXL UNet, TAESD-XL, random weights; `bench.run --sdxl`)", "",
                  "host->host = numpy uint8 in, numpy uint8 out, one frame at a time; 2 / 4 in flight = host to host "
                  "with that many frames on the GPU (latency p50); graph = `graph_error` of the scenario and of each "
                  "in-flight driver, and their capture failures.", "",
                  "| scenario | variant | host->host fps | p50 ms | 2 / 4 in flight fps | device fps | peak GB | graph |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |", *sdxl, ""]
        if floor_1024:
            lines += [f"Arithmetic floor at 1024x1024: {floor_1024['total_gflop']} GFLOP (UNet "
                      f"{floor_1024['gflop']['unet_b1']}) = {floor_1024['floor_ms']} ms ({floor_1024['floor_fps']} fps).", ""]
    flight = in_flight_rows(results)
    if flight:
        lines += ["## Frames in flight (host uint8 -> host uint8)", "",
                  "Each of k frames in flight has its own CUDA graph and CUDA stream, so their kernels overlap on the "
                  "GPU; results come back in order. Latency = submit to result. Only 1-step streams are stateless "
                  "enough for this; fbs2 = two frames batched per call (frame_buffer_size 2).", "",
                  "| scenario | variant | in flight | fps | latency p50 ms | latency p99 ms |",
                  "| --- | --- | --- | --- | --- | --- |", *flight, ""]
    stage_rows = [(f"{name}, {v['variant']}", r["stages_ms"]) for v in results.get("variants", [])
                  for name, r in v.get("scenarios", {}).items() if "stages_ms" in r]
    if stage_rows:
        keys = list(stage_rows[0][1])
        lines += ["## Per-stage GPU time, 1-step img2img 512 (ms, each stage alone in a CUDA graph)", "",
                  "| variant | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
        lines += [f"| {label} | " + " | ".join(_f(st.get(k), 3) for k in keys) + " |" for label, st in stage_rows]
        lines.append("")
    for v in results.get("variants", []):
        r = v.get("scenarios", {}).get("img2img-1step-512", {})
        if r.get("top_kernels"):
            lines += [f"## GPU kernels of one 1-step 512 frame ({v['variant']}, torch.profiler)", "",
                      "| kernel | us per frame | launches per frame |", "| --- | --- | --- |"]
            lines += [f"| `{name}` | {us} | {n} |" for name, us, n in r["top_kernels"]]
            lines.append("")
    rows = targets(results)
    if rows:
        lines += ["## Targets (issue 3)", "", "| target | measured | met |", "| --- | --- | --- |"]
        lines += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in rows]
        if ref_fps:
            lines.append("")
    cn_rows = conditioning_targets(results)
    if cn_rows:
        lines += ["", "## Targets (issue 10: ControlNets)", "",
                  "Random-weight SD 2.1 ControlNets (`ControlNetModel.from_unet` of the bench UNet), canny in torch "
                  "ops, depth = a Depth-Anything-V2-Small-size model (518 px input); all inside the step's CUDA graph.",
                  "", "| target | measured | met |", "| --- | --- | --- |"]
        lines += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in cn_rows]
        lines.append("")
    if results.get("flicker"):
        from .flicker import report_lines as flicker_lines

        lines += flicker_lines(results["flicker"])
    if results.get("loras"):
        from .loras import report_lines as lora_lines

        lines += lora_lines(results["loras"])
    extra = results.get("notes")
    if extra:
        lines += ["## Notes", "", *extra, ""]
    return "\n".join(lines) + "\n"
