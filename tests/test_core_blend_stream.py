"""Prompt and seed blends and temporal feedback in the stream (tiny SD 2.1 / SDXL models, CPU, float32):
the stream's embeddings, noise and latents against the formulas of core/blending.py and the
feedback formulas z = (1 - a) z + a x0_prev, image = (1 - b) image + b previous output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamcam.core import blending as bl
from dreamcam.core import frames as fr
from dreamcam.core.config import StreamConfig
from dreamcam.core.modules import StepModules, eager_modules
from dreamcam.core.stream import StreamDiffusion

import core_helpers as helpers


@pytest.fixture(scope="module")
def comp(tiny_components):
    return tiny_components


def make(comp, **kw) -> StreamDiffusion:
    return helpers.make(comp, **kw)


def slerp_by_hand(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    a, b = a.double(), b.double()
    theta = math.acos(float(torch.dot(a, b) / (a.norm() * b.norm())))
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def cond_rows(stream: StreamDiffusion) -> torch.Tensor:
    """The conditional rows of the UNet batch (full guidance: the second half)."""
    n = stream.num_steps * stream.fbs
    return stream.unet_embeds[-n:]


# ---------------------------------------------------------------------------------- prompt blends
def test_prompt_blend_replaces_the_prompt_with_the_linear_blend(comp):
    stream = make(comp)
    a, _ = stream.prompts.encode("the cat")
    b, _ = stream.prompts.encode("the sea")
    stream.update(prompt_blend="the cat : 0.7 | the sea : 0.3")
    want = 0.7 * a.double() + 0.3 * b.double()
    torch.testing.assert_close(stream.cond_embeds.double(), want, atol=1e-6, rtol=0)
    for row in cond_rows(stream):  # every conditional row of the UNet batch
        torch.testing.assert_close(row.double(), want[0], atol=1e-6, rtol=0)
    stream.update(prompt_blend="")  # off: the prompt again
    torch.testing.assert_close(stream.cond_embeds, a, atol=0, rtol=0)


def test_prompt_blend_slerp_is_the_formula_per_token_and_weights_are_ratios(comp):
    stream = make(comp, prompt_blend="the cat : 1 | the sea : 3", blend_method="slerp")
    a, _ = stream.prompts.encode("the cat")
    b, _ = stream.prompts.encode("the sea")
    for token in (6, 8, 76):  # tokens after the common start "the " differ (a causal text encoder)
        torch.testing.assert_close(stream.cond_embeds[0, token].double(), slerp_by_hand(a[0, token], b[0, token], 0.75),
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stream.cond_embeds[0, 0], a[0, 0], atol=1e-6, rtol=0)  # equal vectors stay
    three = make(comp, prompt_blend="the cat : 0.2 | the sea | a dog : 0.5", blend_method="slerp")
    c, _ = three.prompts.encode("a dog")
    want = bl.blend_embeddings([a, b, c], [0.2, 1.0, 0.5], "slerp")  # the sequential slerp
    torch.testing.assert_close(three.cond_embeds, want, atol=1e-6, rtol=0)


def test_reweighting_a_blend_encodes_no_prompt_again(comp):
    stream = make(comp, prompt_blend="the cat : 0.7 | the sea : 0.3")
    calls = stream.prompts.encoder_calls
    stream.update(prompt_blend="the cat : 0.2 | the sea : 0.8")
    stream.update(prompt_blend="the sea : 1 | the cat : 1", blend_method="slerp")
    stream.update(prompt="the cat", prompt_blend="")
    assert stream.prompts.encoder_calls == calls


def test_a_bad_blend_is_one_error_naming_the_field_and_changes_nothing(comp):
    stream = make(comp, prompt_blend="the cat : 0.7 | the sea : 0.3", seed_blend="2:0.6, 7:0.4")
    stream(helpers.clip(1)[0])
    before = (stream.config, stream.unet_embeds.clone(), stream.init_noise.clone())
    for changes, field in ((dict(prompt_blend="the cat : 0,7 | the sea"), "prompt_blend"),
                           (dict(prompt_blend="the cat : 0 | the sea : 0"), "prompt_blend"),
                           (dict(prompt_blend="the cat : 1 || the sea"), "prompt_blend"),
                           (dict(seed_blend="2:0.5, x:1"), "seed_blend"),
                           (dict(seed_blend="2:-1"), "seed_blend"),
                           (dict(seed_blend="2, 2"), "seed_blend"),
                           (dict(blend_method="cubic", seed=9), "blend_method")):
        with pytest.raises(ValueError, match=f"^{field}: ") as err:
            stream.update(guidance_scale=3.0, **changes)
        assert "\n" not in str(err.value)
        after = (stream.config, stream.unet_embeds, stream.init_noise)
        assert after[0] == before[0] and torch.equal(after[1], before[1]) and torch.equal(after[2], before[2])


def test_transition_runs_from_the_current_blend_to_the_new_one_with_the_method(comp):
    stream = make(comp, transition_frames=4, prompt_blend="the cat : 0.5 | the sea : 0.5", blend_method="slerp")
    frames = helpers.clip(7)
    stream(frames[0])
    start = stream.cond_embeds.clone()
    stream.update(prompt_blend="the sea : 0.1 | a dog : 0.9")
    a, _ = stream.prompts.encode("the sea")
    b, _ = stream.prompts.encode("a dog")
    target = bl.blend_embeddings([a, b], [0.1, 0.9], "slerp")
    for i in range(1, 5):
        stream(frames[i])
        torch.testing.assert_close(stream.cond_embeds, bl.transition(start, target, i / 4, "slerp"), atol=1e-6, rtol=0)
    assert not stream.transition_active
    torch.testing.assert_close(stream.cond_embeds, target, atol=1e-6, rtol=0)
    # a change of method alone re-blends the same prompts: a transition too
    stream.update(blend_method="linear")
    assert stream.transition_active


# ---------------------------------------------------------------------------------- seed blends
def test_seed_blend_is_blend_seeds_and_one_seed_is_that_seed(comp):
    stream = make(comp, seed_blend="2:0.6, 7:0.4")
    shape = stream.init_noise.shape
    torch.testing.assert_close(stream.init_noise, bl.blend_seeds([2, 7], [0.6, 0.4], shape, "linear"), atol=0, rtol=0)
    ptr = stream.init_noise.data_ptr()
    stream.update(blend_method="slerp")  # in place, the slerp of the noise
    assert stream.init_noise.data_ptr() == ptr
    torch.testing.assert_close(stream.init_noise, bl.blend_seeds([2, 7], [0.6, 0.4], shape, "slerp"), atol=0, rtol=0)
    torch.testing.assert_close(stream.noise_next, torch.roll(stream.init_noise, -stream.fbs, dims=0), atol=0, rtol=0)
    stream.update(seed_blend="7:3")
    assert torch.equal(stream.init_noise, make(comp, seed=7).init_noise)
    stream.update(seed_blend="", seed=5)
    assert torch.equal(stream.init_noise, make(comp, seed=5).init_noise)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from dreamcam.core.loading import ModelSpec, load_components
    from dreamcam.core.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-blend"), "sdxl")
    return load_components(ModelSpec(str(folder), tiny_vae=str(folder / "taesd")))


def test_sdxl_pooled_embeddings_are_blended_too(sdxl):
    stream = StreamDiffusion(sdxl, StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none",
                                                prompt_blend="the cat : 0.25 | the sea : 0.75", blend_method="slerp"))
    (a, pa), (b, pb) = stream.prompts.encode("the cat"), stream.prompts.encode("the sea")
    torch.testing.assert_close(stream.cond_embeds, bl.blend_embeddings([a, b], [0.25, 0.75], "slerp"), atol=1e-6, rtol=0)
    torch.testing.assert_close(stream.unet_pooled[-1:].double(), slerp_by_hand(pa[0], pb[0], 0.75)[None],
                               atol=1e-5, rtol=1e-5)
    assert stream(helpers.clip(1)[0]).shape == (64, 64, 3)


# ---------------------------------------------------------------------------------- feedback
class Spy:
    """Eager modules that keep what the step gave the encoder, the UNet and the decoder."""

    def __init__(self, comp) -> None:
        self.inner = eager_modules(comp)
        self.encoded: list[torch.Tensor] = []
        self.samples: list[torch.Tensor] = []
        self.decoded: list[torch.Tensor] = []
        self.modules = StepModules(self.unet, self.encode, self.decode)

    def encode(self, images):
        self.encoded.append(images.clone())
        return self.inner.encode(images)

    def unet(self, sample, *args, **kw):
        self.samples.append(sample.clone())
        return self.inner.unet(sample, *args, **kw)

    def decode(self, latents):
        self.decoded.append(latents.clone())
        return self.inner.decode(latents)


ONE_STEP = dict(t_index_list=(30,), cfg_type="none")


def spied(comp, **kw) -> tuple[StreamDiffusion, Spy]:
    spy = Spy(comp)
    config = StreamConfig(**{**dict(width=64, height=64, prompt="the cat"), **ONE_STEP, **kw})
    return StreamDiffusion(comp, config, modules=spy.modules), spy


def noised(stream: StreamDiffusion, z: torch.Tensor) -> torch.Tensor:
    return stream.alpha[:1] * z + stream.beta[:1] * stream.init_noise[:1]


def test_feedback_zero_is_bit_identical_to_no_feedback(comp):
    frames = helpers.clip(4)
    stream, spy = spied(comp, latent_feedback=0.6, image_feedback=0.4)
    for f in frames[:2]:
        stream(f)
    stream.update(latent_feedback=0.0, image_feedback=0.0)  # the state now holds a real previous output
    plain, plain_spy = spied(comp)
    for f in frames[2:]:
        assert np.array_equal(stream(f), plain(f))
    for i, f in enumerate(frames[2:]):
        x = fr.to_unit(torch.from_numpy(f)[None], torch.float32)
        assert torch.equal(spy.encoded[2 + i], x) and torch.equal(plain_spy.encoded[i], x)
        assert torch.equal(spy.samples[2 + i], plain_spy.samples[i])
        z = plain_spy.inner.encode(x).float()
        assert torch.equal(plain_spy.samples[i], noised(plain, z))


def test_latent_feedback_one_noises_the_previous_output_latent(comp):
    frames = helpers.clip(3)
    stream, spy = spied(comp, latent_feedback=1.0)
    stream(frames[0])
    z0 = spy.inner.encode(spy.encoded[0]).float()
    assert torch.equal(spy.samples[0], noised(stream, z0))  # the first frame: no previous output yet
    for i in (1, 2):
        stream(frames[i])
        torch.testing.assert_close(spy.samples[i], noised(stream, spy.decoded[i - 1]), atol=1e-6, rtol=0)


def test_latent_feedback_mixes_by_the_formula_and_changes_in_place(comp):
    frames = helpers.clip(3)
    stream, spy = spied(comp, latent_feedback=0.25)
    stream(frames[0])
    ptrs = [t.data_ptr() for t in stream.step_state()]
    key = stream.shape_key
    stream.update(latent_feedback=0.6)  # a value change: in place, same capture
    assert [t.data_ptr() for t in stream.step_state()] == ptrs and stream.shape_key == key
    stream(frames[1])
    z = spy.inner.encode(spy.encoded[1]).float()
    torch.testing.assert_close(spy.samples[1], noised(stream, 0.4 * z + 0.6 * spy.decoded[0]), atol=1e-6, rtol=0)


def test_image_feedback_mixes_the_previous_output_image_into_the_input(comp):
    frames = helpers.clip(3)
    stream, spy = spied(comp, image_feedback=0.5)
    out = stream(frames[0])
    prev = spy.inner.decode(spy.decoded[0]).clamp(-1, 1)
    assert np.array_equal(out, fr.from_unit(prev)[0].numpy())
    stream(frames[1])
    x = fr.to_unit(torch.from_numpy(frames[1])[None], torch.float32)
    torch.testing.assert_close(spy.encoded[1], 0.5 * x + 0.5 * prev, atol=1e-6, rtol=0)
    stream.update(image_feedback=1.0)
    stream(frames[2])
    prev = spy.inner.decode(spy.decoded[1]).clamp(-1, 1)
    torch.testing.assert_close(spy.encoded[2], prev, atol=1e-6, rtol=0)


def test_feedback_state_resets_on_reset_and_on_a_shape_change(comp):
    frames = helpers.clip(4)
    stream, spy = spied(comp, latent_feedback=1.0)
    stream(frames[0])
    stream(frames[1])
    stream.reset()
    stream(frames[2])  # nothing of before the reset is mixed in
    assert torch.equal(spy.samples[2], noised(stream, spy.inner.encode(spy.encoded[2]).float()))
    stream.update(width=72)
    assert stream.prev_latent.shape[-1] == 9 and float(stream.feedback_valid) == 0.0
    assert stream(frames[3]).shape == (64, 72, 3)


def test_feedback_makes_a_one_step_stream_stateful_and_is_in_the_step_state(comp):
    stream, _ = spied(comp)
    assert stream.stateless
    key = stream.shape_key
    stream.update(latent_feedback=0.3)
    assert not stream.stateless and stream.shape_key != key  # lanes share no state: recapture once
    state = stream.step_state()
    for t in stream.feedback_state:
        assert any(t is s for s in state)
    stream.update(latent_feedback=0.5, image_feedback=0.2)  # values only: same key
    assert stream.shape_key == key[:-1] + (True,)


def test_feedback_off_runs_no_feedback_work_and_switching_on_mixes_nothing_stale(comp):
    """Shares of 0 are structural (as a ControlNet scale of 0): the step neither mixes nor keeps,
    the key says so in multi-step streams too, and the first frame after switching on mixes in
    no output kept before it was switched off."""
    frames = helpers.clip(5)
    stream, spy = spied(comp, latent_feedback=1.0)
    stream(frames[0])
    stream(frames[1])
    kept = stream.prev_latent.clone()
    stream.update(latent_feedback=0.0)
    stream(frames[2])
    assert torch.equal(stream.prev_latent, kept)  # nothing kept while off
    stream.update(latent_feedback=1.0)
    stream(frames[3])  # the output kept before the switch is stale: not mixed in
    assert torch.equal(spy.samples[3], noised(stream, spy.inner.encode(spy.encoded[3]).float()))
    stream(frames[4])
    torch.testing.assert_close(spy.samples[4], noised(stream, spy.decoded[3]), atol=1e-6, rtol=0)
    two_step, _ = spied(comp, t_index_list=(20, 35), cfg_type="self")
    key = two_step.shape_key
    two_step.update(image_feedback=0.3)
    assert two_step.shape_key != key and not two_step.stateless


def test_feedback_steadies_the_output_of_a_noisy_static_input(comp):
    """A still scene seen by a camera (Gaussian sensor noise): feedback first moves the output to
    its fixed point (the previous output is mixed back in, so the first frames after a reset change
    a lot: a fade over about 1 / (1 - share) frames), then the mean absolute change from one output
    frame to the next is smaller than without feedback (the sensor noise is averaged over frames)."""
    rng = np.random.default_rng(1)
    base = helpers.clip(1)[0].astype(np.float32)
    frames = [np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8) for _ in range(30)]

    def changes(**kw) -> np.ndarray:
        stream, _ = spied(comp, **kw)
        outs = np.stack([stream(f) for f in frames]).astype(np.float32)
        return np.abs(np.diff(outs, axis=0)).mean(axis=(1, 2, 3))

    plain = changes()[-12:].mean()
    assert plain > 0.1
    for kw in (dict(latent_feedback=0.5), dict(image_feedback=0.5)):
        settling = changes(**kw)
        assert settling[0] > 2 * plain  # moving to the fixed point
        assert settling[-12:].mean() < 0.6 * plain, kw  # then steadier than without feedback
