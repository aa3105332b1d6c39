"""Shared fixtures. Keep this file small; add fixtures with short, additive edits."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SD 2.1 / SD-Turbo-architecture diffusers folder (with `taesd/` inside)."""
    from dreamcam.core.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-sd21"), "sd21")


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    """A tiny random SD 1.5-architecture diffusers folder (LCM scheduler, `taesd/` inside)."""
    from dreamcam.core.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-sd15"), "sd15")


@pytest.fixture(scope="session")
def tiny_components(tiny_model_dir):
    """The tiny SD 2.1 model loaded on the CPU in float32 with its TAESD (shared: do not modify)."""
    from dreamcam.core.loading import ModelSpec, load_components

    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))
