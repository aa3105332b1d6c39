"""Several LoRAs with live weights (core/lora.py) against diffusers' load_lora_weights + set_adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from dreamcam.core.loading import ModelLoadError, ModelSpec, load_components
from dreamcam.core.lora import LoraError, LoraSpec, LoraStack, lora_family
from dreamcam.core.modules import EagerUNet
from dreamcam.core.tiny import make_tiny_kohya_lora, make_tiny_lora, make_tiny_model

import core_helpers as helpers

# B adapts more than attention: the transformer's input projection and the ResNet convolutions (conv LoRA)
B_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1")


@pytest.fixture(scope="module")
def loras(tiny_model_dir, tmp_path_factory):
    """A: diffusers folder format, rank 4. B: one kohya .safetensors file, rank 4, alpha 2 (scale 0.5)."""
    root = tmp_path_factory.mktemp("loras")
    a = make_tiny_lora(tiny_model_dir, root / "a", seed=1)
    b = make_tiny_kohya_lora(tiny_model_dir, root / "b" / "style.safetensors", rank=4, alpha=2.0, seed=2,
                             targets=B_TARGETS)
    return a, b


@pytest.fixture()
def comp(tiny_model_dir):
    """A fresh copy per test: the stack changes the UNet."""
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), local_files_only=True))


def unet_inputs(width=1024):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([499, 199]),
            torch.randn(2, 77, width, generator=gen))


@torch.no_grad()
def ours(comp):
    return EagerUNet(comp.unet)(*unet_inputs())


@torch.no_grad()
def theirs(pipe):
    sample, t, embeds = unet_inputs()
    return pipe.unet(sample, t, encoder_hidden_states=embeds).sample


def reference_pipe(model_dir, loras, weights):
    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(loras[0]), adapter_name="a")
    pipe.load_lora_weights(str(loras[1]), adapter_name="style")
    pipe.set_adapters(["a", "style"], adapter_weights=list(weights))
    return pipe


def lora_params(comp):
    return {n: p.data_ptr() for n, p in comp.unet.named_parameters() if "lora_" in n}


def test_two_loras_with_weights_equal_diffusers_and_change_live(comp, loras, tiny_model_dir):
    plain = ours(comp)
    stack = LoraStack(comp, local_files_only=True)
    stack.apply([LoraSpec(str(loras[0]), 0.7, name="a"), LoraSpec(str(loras[1]), 0.3)])
    assert stack.weights == {"a": 0.7, "style": 0.3} and stack.loads == 2
    pipe = reference_pipe(tiny_model_dir, loras, (0.7, 0.3))
    got = ours(comp)
    torch.testing.assert_close(got, theirs(pipe), atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the LoRAs really act

    params, key = lora_params(comp), stack.structure_key
    for weights in ((0.2, 0.9), (-0.5, 1.0), (1.0, 0.0)):
        stack.set_weights({"a": weights[0], "style": weights[1]})
        pipe.set_adapters(["a", "style"], adapter_weights=list(weights))
        torch.testing.assert_close(ours(comp), theirs(pipe), atol=1e-5, rtol=1e-5)
    assert stack.loads == 2 and stack.structure_key == key
    assert lora_params(comp) == params  # same parameters in place: nothing reloaded or re-injected
    stack.set_weights({"a": 0.0, "style": 0.0})
    torch.testing.assert_close(ours(comp), plain, atol=1e-6, rtol=0)

    stack.apply([LoraSpec(str(loras[1]), 0.3)])  # drop A, keep B with its weight
    assert stack.loads == 2 and list(stack.weights) == ["style"]
    assert not any(".a." in n for n in lora_params(comp))
    pipe.delete_adapters("a")
    pipe.set_adapters(["style"], adapter_weights=[0.3])
    torch.testing.assert_close(ours(comp), theirs(pipe), atol=1e-5, rtol=1e-5)
    key_b = stack.structure_key
    stack.apply([])
    stack.apply([LoraSpec(str(loras[1]), 0.3)])  # loaded again: new parameter tensors, so a graph kept
    assert stack.structure_key != key_b  # for the first load's key must not replay
    stack.clear()
    torch.testing.assert_close(ours(comp), plain, atol=1e-6, rtol=0)


def test_a_weight_change_shows_in_the_next_stream_frame(comp, loras):
    stack = LoraStack(comp, local_files_only=True)
    stack.apply([LoraSpec(str(loras[1]), 0.0)])
    stream = helpers.make(comp, cfg_type="none", t_index_list=(30,))
    frames = helpers.clip(4)
    off = stream(frames[0])
    stack.set_weights({"style": 1.0})
    on = stream(frames[0])
    stack.set_weights({"style": 0.0})
    assert np.abs(on.astype(int) - off.astype(int)).max() > 0
    assert np.array_equal(stream(frames[0]), off)


@pytest.fixture(scope="module")
def foreign_loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    sdxl = make_tiny_lora(make_tiny_model(root / "sdxl", "sdxl", with_taesd=False), root / "sdxl-lora", seed=4)
    sd15 = make_tiny_kohya_lora(make_tiny_model(root / "sd15", "sd15", with_taesd=False),
                                root / "sd15-lora.safetensors", seed=5)
    return {"sdxl": sdxl, "sd15": sd15}


@pytest.mark.parametrize("family, label", [("sdxl", "SDXL"), ("sd15", "SD 1.5")])
def test_a_lora_of_another_family_is_one_clear_error_and_nothing_changes(comp, loras, foreign_loras, family, label):
    stack = LoraStack(comp, local_files_only=True)
    stack.apply([LoraSpec(str(loras[0]), 0.7, name="a")])
    before, params, peft_names = ours(comp), lora_params(comp), set(comp.unet.peft_config)
    foreign = str(foreign_loras[family])
    with pytest.raises(LoraError) as info:
        stack.apply([LoraSpec(str(loras[0]), 0.5, name="a"), LoraSpec(str(loras[1]), 0.3), LoraSpec(foreign, 1.0)])
    message = str(info.value)
    assert foreign in message and f"an {label} LoRA" in message and "SD 2.1 / SD-Turbo" in message
    assert len(message.splitlines()) == 1
    assert isinstance(info.value, ValueError) and isinstance(info.value, ModelLoadError)
    # nothing half-applied: B (loaded before the bad one in the same call) is gone again, A's weight is unchanged
    assert stack.weights == {"a": 0.7} and set(comp.unet.peft_config) == peft_names
    assert lora_params(comp) == params
    torch.testing.assert_close(ours(comp), before, atol=0, rtol=0)


def test_the_family_of_a_lora_is_read_from_its_cross_attention_width(loras, foreign_loras):
    for source, family in ((loras[0], "sd21"), (foreign_loras["sdxl"], "sdxl"), (foreign_loras["sd15"], "sd15")):
        state, _ = StableDiffusionPipeline.lora_state_dict(str(source))
        assert lora_family(state) == family


def test_bad_loras_and_weights_name_the_thing(comp, loras, tmp_path):
    stack = LoraStack(comp, local_files_only=True)
    not_lora = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(not_lora))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cases = [
        ([LoraSpec("/no/such/lora.safetensors")], "no such file or folder"),
        ([LoraSpec(str(text))], ".safetensors"),
        ([LoraSpec(str(not_lora))], "weights.safetensors"),
        ([LoraSpec(str(loras[0]), float("nan"))], "finite"),
        ([LoraSpec(str(loras[0]), name="x"), LoraSpec(str(loras[1]), name="x")], "used twice"),
    ]
    for specs, needle in cases:
        with pytest.raises(LoraError, match=needle):
            stack.apply(specs)
        assert stack.weights == {} and not getattr(comp.unet, "peft_config", {})
    stack.apply([LoraSpec(str(loras[0]), 0.5, name="a")])
    for bad, needle in (({"b": 1.0}, "no LoRA of that name"), ({"a": "strong"}, "finite number")):
        with pytest.raises(LoraError, match=needle):
            stack.set_weights(bad)
    assert stack.weights == {"a": 0.5}


def test_lcm_lora_stays_fused_under_live_loras(loras, tiny_model_dir):
    lcm = loras[0]  # any LoRA stands in for LCM-LoRA: fused at load time, not an adapter
    comp = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=None, lcm_lora=str(lcm), local_files_only=True))
    fused = ours(comp)
    stack = LoraStack(comp, local_files_only=True)
    stack.apply([LoraSpec(str(loras[1]), 0.8)])
    assert list(comp.unet.peft_config) == ["style"]
    assert (ours(comp) - fused).abs().max() > 1e-2
    stack.clear()
    torch.testing.assert_close(ours(comp), fused, atol=1e-6, rtol=0)


def test_fused_loras_equal_live_ones_change_in_place_and_unfuse_exactly(comp, loras):
    plain = ours(comp)
    stack = LoraStack(comp, local_files_only=True)
    stack.apply([LoraSpec(str(loras[0]), 0.7, name="a"), LoraSpec(str(loras[1]), 0.3)])
    live = ours(comp)
    bases = {n: (p.data_ptr(), p.detach().clone()) for n, p in comp.unet.named_parameters()
             if "base_layer" in n}
    key = stack.structure_key
    stack.fuse()
    assert stack.fused and stack.structure_key != key  # the layers compute otherwise: recapture
    torch.testing.assert_close(ours(comp), live, atol=1e-5, rtol=1e-5)
    changed = [n for n, p in comp.unet.named_parameters() if n in bases and not torch.equal(p, bases[n][1])]
    assert changed  # the LoRAs now live in the base weights
    params = {n: p.data_ptr() for n, p in comp.unet.named_parameters()}
    stack.set_weights({"a": -0.4, "style": 1.0})  # re-folded in place: a captured graph stays valid
    assert {n: p.data_ptr() for n, p in comp.unet.named_parameters()} == params and stack.fused
    fused = ours(comp)
    stack.unfuse()
    torch.testing.assert_close(ours(comp), fused, atol=1e-5, rtol=1e-5)  # live at the same weights
    for n, p in comp.unet.named_parameters():
        if n in bases:
            assert p.data_ptr() == bases[n][0] and torch.equal(p, bases[n][1]), n  # W0 exactly
    stack.fuse()
    stack.apply([LoraSpec(str(loras[0]), 0.5, name="a")])  # a set change while fused: fused again
    assert stack.fused
    fused_a = ours(comp)
    stack.unfuse()
    torch.testing.assert_close(ours(comp), fused_a, atol=1e-5, rtol=1e-5)
    stack.clear()
    assert not stack.fused and torch.equal(ours(comp), plain)
