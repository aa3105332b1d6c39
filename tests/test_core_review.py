"""Review fixes: update atomicity on encode failures, transitions across unrelated updates,
SDXL's zero negative for an empty negative prompt, guidance <= 1 as in diffusers, and
clear errors for files that are not checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelLoadError, ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion

import core_helpers as helpers


@pytest.fixture(scope="module")
def comp(tiny_components):
    return tiny_components


def clip(count):
    return helpers.clip(count, seed=1)


make = helpers.make


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompt_that_fails_to_encode_is_a_value_error_and_changes_nothing(comp, monkeypatch, field):
    stream = make(comp)
    frames = clip(2)
    stream(frames[0])
    before, embeds = stream.config, stream.unet_embeds.clone()
    original = stream.prompts._encode

    def failing(prompt):
        if prompt == "boom":
            raise RuntimeError("CUDA out of memory")
        return original(prompt)

    monkeypatch.setattr(stream.prompts, "_encode", failing)
    with pytest.raises(ValueError, match=field):  # the runner keeps streaming on ValueError
        stream.update(guidance_scale=3.0, **{field: "boom"})
    assert stream.config == before and torch.equal(stream.unet_embeds, embeds)
    assert float(stream.guidance) == 2.0
    stream(frames[1])


def test_prompt_transition_survives_an_unrelated_update(comp):
    """The runner sends every setting on each change: a guidance tweak mid-transition must not
    make the prompt jump to its target."""
    stream = make(comp, transition_frames=4)
    start, _ = stream.prompts.encode("the cat")
    target, _ = stream.prompts.encode("the sea")
    frames = clip(6)
    stream(frames[0])
    stream.update(prompt="the sea")
    stream(frames[1])
    stream.update(prompt="the sea", guidance_scale=3.0)
    for i in range(2, 5):
        stream(frames[i])
        torch.testing.assert_close(stream.cond_embeds, torch.lerp(start, target, i / 4))
    stream(frames[5])
    torch.testing.assert_close(stream.cond_embeds, target)


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from dreamcam.core.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"), "sdxl")


def test_sdxl_empty_negative_prompt_is_zeros_like_diffusers(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    comp = load_components(ModelSpec(str(sdxl_dir), tiny_vae=str(sdxl_dir / "taesd"), local_files_only=True))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), local_files_only=True)
    assert pipe.config.force_zeros_for_empty_prompt
    cond, neg, pooled, neg_pooled = pipe.encode_prompt("the cat", device="cpu", num_images_per_prompt=1,
                                                       do_classifier_free_guidance=True, negative_prompt=None)
    stream = StreamDiffusion(comp, StreamConfig(width=64, height=64, t_index_list=(20, 40), cfg_type="full",
                                                prompt="the cat", negative_prompt=""))
    n = stream.num_steps
    torch.testing.assert_close(stream.unet_embeds[:n], neg.expand(n, -1, -1))
    torch.testing.assert_close(stream.unet_embeds[n:], cond.expand(n, -1, -1))
    torch.testing.assert_close(stream.unet_pooled[:n], neg_pooled.expand(n, -1))
    torch.testing.assert_close(stream.unet_pooled[n:], pooled.expand(n, -1))
    stream.update(negative_prompt="an ant")  # a real negative prompt is encoded as usual
    _, neg2, _, neg_pooled2 = pipe.encode_prompt("the cat", device="cpu", num_images_per_prompt=1,
                                                 do_classifier_free_guidance=True, negative_prompt="an ant")
    torch.testing.assert_close(stream.unet_embeds[:n], neg2.expand(n, -1, -1))
    torch.testing.assert_close(stream.unet_pooled[:n], neg_pooled2.expand(n, -1))
    stream.update(prompt="")  # an empty POSITIVE prompt is encoded, never zeroed
    assert stream.unet_embeds[n:].abs().max() > 0


@pytest.mark.parametrize("cfg_type", ["full", "self"])
def test_guidance_at_most_one_means_no_guidance_as_in_diffusers(comp, cfg_type):
    frames = clip(3)
    plain, weak = make(comp, cfg_type="none"), make(comp, cfg_type=cfg_type, guidance_scale=0.5)
    for f in frames:  # equal up to float rounding (eps_u + 1 * (eps_c - eps_u), a larger UNet batch)
        diff = np.abs(plain(f).astype(int) - weak(f).astype(int))
        assert diff.max() <= 1, diff.max()


def test_files_that_are_not_checkpoints_get_a_clear_error(tmp_path, tiny_sd15_dir):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("not a model at all")
    pickle = tmp_path / "garbage.ckpt"
    pickle.write_bytes(b"junk bytes")
    lora_like = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 4)}, str(lora_like))
    for path in (garbage, pickle, lora_like):
        with pytest.raises(ModelLoadError) as err:
            load_components(ModelSpec(str(path), tiny_vae=None, config=str(tiny_sd15_dir), local_files_only=True))
        text = str(err.value)
        assert repr(str(path)) in text and "checkpoint" in text, text
    assert "not a Stable Diffusion checkpoint" in text


def test_filter_takes_a_flipped_numpy_view(comp):
    """OpenCV BGR->RGB via frame[..., ::-1] is a negative-stride view: the filter must cope."""
    stream = make(comp, similarity_threshold=0.9, cfg_type="none")
    bgr = clip(1)[0]
    first = stream(bgr[:, :, ::-1])
    assert np.array_equal(stream(bgr[:, :, ::-1]), first) and stream.frames_skipped == 1


@pytest.mark.parametrize("local_only", [True, False])
def test_local_folder_with_a_missing_part_names_the_part_folder(tmp_path, tiny_sd15_dir, local_only):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd15_dir, broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model*"):
        weights.unlink()
    with pytest.raises(ModelLoadError) as err:
        load_components(ModelSpec(str(broken), tiny_vae=None, local_files_only=local_only))
    text = str(err.value)
    assert str(broken / "unet") in text and "huggingface-cli download" not in text, text
