"""Background compiles (engines/background.py) run one at a time, and while they run Python switches
threads often (the frame thread gets the GIL back soon after each kernel launch); the process's own
switch interval is back once the last compile ends."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from dreamcam.engines import EngineConfig, background
from dreamcam.engines.background import LiveCompiled


def _held_compile(gate: threading.Event, started: threading.Event):
    def compiled(x: torch.Tensor) -> torch.Tensor:
        if threading.current_thread().name.startswith("compile-"):
            started.set()
            assert gate.wait(timeout=60), "the test never opened the gate"
        return x + 1

    return compiled


def _live(name: str, gate: threading.Event, started: threading.Event, interval: float | None) -> LiveCompiled:
    return LiveCompiled(name, _held_compile(gate, started), lambda x: x + 1, compile_first=False,
                        switch_interval_s=interval, on_event=lambda text: None)


def test_compiles_run_one_at_a_time_with_a_short_switch_interval_restored_after_the_last() -> None:
    own = sys.getswitchinterval()
    gates = [threading.Event(), threading.Event()]
    started = [threading.Event(), threading.Event()]
    unet, decoder = (_live(n, g, s, 2e-4) for n, g, s in zip(("UNet", "decoder"), gates, started))
    try:
        assert torch.equal(unet(torch.zeros(2)), torch.ones(2))  # the eager twin serves; the compile starts
        assert torch.equal(decoder(torch.zeros(3)), torch.ones(3))  # queued behind the UNet's
        assert started[0].wait(timeout=30)
        assert not started[1].wait(timeout=0.5)  # Dynamo's tracing flags are process-wide: never two at once
        assert background.compiling() and sys.getswitchinterval() == pytest.approx(2e-4)
        gates[0].set()
        assert started[1].wait(timeout=30)
        assert sys.getswitchinterval() == pytest.approx(2e-4)  # the decoder still compiles
    finally:
        for gate in gates:
            gate.set()
    assert background.wait_idle(30)
    assert sys.getswitchinterval() == own


def test_none_leaves_the_process_switch_interval_alone() -> None:
    own = sys.getswitchinterval()
    gate, started = threading.Event(), threading.Event()
    live = _live("UNet", gate, started, None)
    live(torch.zeros(2))
    assert started.wait(timeout=30)
    assert sys.getswitchinterval() == own
    gate.set()
    assert background.wait_idle(30) and sys.getswitchinterval() == own


def test_the_engine_config_checks_the_interval() -> None:
    assert EngineConfig().compile_switch_interval_s == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="compile_switch_interval_s"):
        EngineConfig(compile_switch_interval_s=0)

