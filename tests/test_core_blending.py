"""Prompt and seed blending against the formulas of core/blending.py (float32, CPU), and statistics."""

from __future__ import annotations

import math

import pytest
import torch

from dreamcam.core import blending as bl


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def slerp_by_hand(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """The textbook formula for one pair of vectors, in float64."""
    a, b = a.double(), b.double()
    theta = math.acos(float(torch.dot(a, b) / (a.norm() * b.norm())))
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def test_weights_are_normalised_and_bad_weights_name_the_field():
    assert bl.normalise_weights([2, 6]) == [0.25, 0.75]
    for bad in ([], [1, -1], [0, 0], [float("nan"), 1], [float("inf")]):
        with pytest.raises(ValueError, match="prompt weights"):
            bl.normalise_weights(bad, "prompt weights")
    with pytest.raises(ValueError, match="blend method"):
        bl.blend([rand(3), rand(3)], [1, 1], "cubic")
    with pytest.raises(ValueError, match="2 items but 1 weights"):
        bl.blend([rand(3), rand(3)], [1])
    with pytest.raises(ValueError, match="one shape"):
        bl.blend([rand(3), rand(4)], [1, 1])


def test_linear_blend_is_the_normalised_weighted_sum():
    items = [rand(1, 77, 16, seed=s) for s in range(3)]
    got = bl.blend_embeddings(items, [1.0, 2.0, 5.0], "linear")
    want = (1 * items[0].double() + 2 * items[1].double() + 5 * items[2].double()) / 8
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_slerp_of_two_embeddings_is_the_formula_per_token():
    a, b = rand(1, 77, 16, seed=1), rand(1, 77, 16, seed=2)
    got = bl.blend_embeddings([a, b], [0.3, 0.7], "slerp")
    for token in (0, 5, 76):
        want = slerp_by_hand(a[0, token], b[0, token], 0.7)
        torch.testing.assert_close(got[0, token].double(), want, atol=1e-5, rtol=1e-5)
    # two unit vectors stay on the unit sphere along the whole arc (a lerp would cut the chord)
    ua, ub = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    for t in (0.25, 0.5, 0.75):
        mid = bl.slerp(ua, ub, t)
        torch.testing.assert_close(mid.norm(dim=-1), torch.ones(1, 77), atol=1e-5, rtol=0)


def test_slerp_endpoints_and_degenerate_vectors():
    a, b = rand(4, 8, seed=3), rand(4, 8, seed=4)
    torch.testing.assert_close(bl.slerp(a, b, 0.0), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(bl.slerp(a, b, 1.0), b, atol=1e-6, rtol=0)
    # parallel, antiparallel and zero vectors fall back to the lerp (no NaN)
    for other in (2 * a, -a, torch.zeros_like(a)):
        got = bl.slerp(a, other, 0.4)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, 0.6 * a + 0.4 * other, atol=1e-5, rtol=0)


def test_sequential_slerp_of_n_items_follows_the_recursion():
    items = [rand(1, 77, 16, seed=s) for s in range(4)]
    weights = [0.5, 0.0, 1.5, 2.0]
    got = bl.blend_embeddings(items, weights, "slerp")
    p = [w / 4.0 for w in weights]
    acc, c = items[0][0].double(), p[0]
    for w, x in zip(p[1:], items[1:]):
        c += w
        if w == 0:
            continue  # t = 0: acc unchanged
        acc = torch.stack([slerp_by_hand(acc[k], x[0, k], w / c) for k in range(77)])
    torch.testing.assert_close(got[0].double(), acc, atol=1e-5, rtol=1e-5)
    # the same recursion with lerp is exactly the linear blend (the methods share the weight meaning)
    acc, c = items[0].double(), p[0]
    for w, x in zip(p[1:], items[1:]):
        c += w
        acc = torch.lerp(acc, x.double(), w / c)
    torch.testing.assert_close(bl.blend_embeddings(items, weights, "linear").double(), acc, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", bl.METHODS)
def test_one_item_and_zero_weights_give_that_item_exactly(method):
    a, b = rand(1, 77, 16, seed=5), rand(1, 77, 16, seed=6)
    assert torch.equal(bl.blend_embeddings([a], [3.0], method), a)
    torch.testing.assert_close(bl.blend_embeddings([a, b], [0.0, 1.0], method), b, atol=1e-6, rtol=0)
    torch.testing.assert_close(bl.blend_embeddings([a, b], [1.0, 0.0], method), a, atol=1e-6, rtol=0)


def test_seed_noise_is_the_streams_noise_and_one_seed_blends_to_itself():
    shape = (2, 4, 8, 8)
    gen = torch.Generator("cpu").manual_seed(42)
    assert torch.equal(bl.seed_noise(42, shape), torch.randn(shape, generator=gen))
    for method in bl.METHODS:
        assert torch.equal(bl.blend_seeds([42], [0.5], shape, method), bl.seed_noise(42, shape))
        torch.testing.assert_close(bl.blend_seeds([42, 7], [1.0, 0.0], shape, method), bl.seed_noise(42, shape),
                                   atol=1e-6, rtol=0)


def test_linear_seed_blend_is_the_variance_preserving_sum():
    shape = (3, 4, 16, 16)
    got = bl.blend_seeds([1, 2, 3], [1.0, 1.0, 2.0], shape, "linear")
    n = [bl.seed_noise(s, shape).double() for s in (1, 2, 3)]
    want = (0.25 * n[0] + 0.25 * n[1] + 0.5 * n[2]) / math.sqrt(0.25 ** 2 + 0.25 ** 2 + 0.5 ** 2)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_slerp_seed_blend_of_two_is_the_formula_per_sample():
    shape = (2, 4, 8, 8)
    got = bl.blend_seeds([10, 11], [0.6, 0.4], shape, "slerp")
    a, b = bl.seed_noise(10, shape), bl.seed_noise(11, shape)
    for row in range(2):
        want = slerp_by_hand(a[row].flatten(), b[row].flatten(), 0.4)
        torch.testing.assert_close(got[row].flatten().double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", bl.METHODS)
@pytest.mark.parametrize("weights", [[1, 1], [0.9, 0.1], [1, 2, 3, 4]])
def test_blended_noise_stays_standard_normal(method, weights):
    """16 samples of 4 x 64 x 64 (262144 values): the mean of N(0,1) samples has std 1/512, the sample
    std has std ~ 1/724, so 0.01 bounds are > 5 sigma (the fourth moment: std 0.019, bound 0.1); a plain weighted mean of [1, 1] would give
    std 0.707 and fail."""
    seeds = list(range(100, 100 + len(weights)))
    mixed = bl.blend_seeds(seeds, weights, (16, 4, 64, 64), method)
    assert abs(float(mixed.mean())) < 0.01
    assert abs(float(mixed.std()) - 1.0) < 0.01
    # and it is still Gaussian-shaped: fourth moment ~3 (kurtosis of a normal)
    assert abs(float((mixed ** 4).mean()) - 3.0) < 0.1
    if len(weights) == 2 and weights[0] == weights[1]:  # an equal mix is correlated 0.707 with each seed
        corr = float((mixed * bl.seed_noise(seeds[0], mixed.shape)).mean())
        assert abs(corr - math.sqrt(0.5)) < 0.01


@pytest.mark.parametrize("method", bl.METHODS)
def test_transition_runs_from_start_to_target(method):
    start, target = rand(1, 77, 16, seed=8), rand(1, 77, 16, seed=9)
    torch.testing.assert_close(bl.transition(start, target, 0.0, method), start, atol=1e-6, rtol=0)
    torch.testing.assert_close(bl.transition(start, target, 1.0, method), target, atol=1e-6, rtol=0)
    mid = bl.transition(start, target, 0.25, method)
    torch.testing.assert_close(mid, bl.blend_embeddings([start, target], [0.75, 0.25], method))
    if method == "linear":
        torch.testing.assert_close(mid, torch.lerp(start, target, 0.25), atol=1e-6, rtol=0)
    # the distance to the target shrinks monotonically along the transition
    dists = [float((bl.transition(start, target, t, method) - target).norm()) for t in (0, 0.25, 0.5, 0.75, 1)]
    assert dists == sorted(dists, reverse=True)


# ---- the weighted lists typed as text (core/weighted.py), shared by StreamConfig and the schema ----
def test_prompt_blend_text_is_read_into_prompts_and_weights():
    from dreamcam.core.weighted import PROMPT_BLEND

    assert PROMPT_BLEND.parse("prompt_blend", "") == () and PROMPT_BLEND.parse("prompt_blend", "   ") == ()
    assert PROMPT_BLEND.parse("prompt_blend", "prompt A : 0.7 | prompt B : 0.3") == (("prompt A", 0.7),
                                                                                      ("prompt B", 0.3))
    # no weight: 1; the weight is after the LAST colon; a colon followed by words is part of the prompt
    assert PROMPT_BLEND.parse("p", " a cat|style: ink : 2 | art: watercolor ") == (
        ("a cat", 1.0), ("style: ink", 2.0), ("art: watercolor", 1.0))
    assert PROMPT_BLEND.parse("p", "a : 0 | b : 1e-1") == (("a", 0.0), ("b", 0.1))


@pytest.mark.parametrize("text, words", [
    ("a : 0,7 | b", "weight of 'a : 0,7' is not a number"),
    ("a : | b", "has no weight after ':'"),
    (": 0.5 | b", "has no prompt"),
    ("a | | b", "empty"),
    ("a : 0 | b : 0", "add up to 0"),
    ("a : -1 | b", ">= 0"),
    ("a : -inf", ">= 0"),
    (" | ".join("abcdefghi"), "at most 8 prompts"),
])
def test_bad_prompt_blends_are_one_line_naming_the_field(text, words):
    from dreamcam.core.weighted import PROMPT_BLEND

    with pytest.raises(ValueError, match="^prompt_blend: ") as err:
        PROMPT_BLEND.parse("prompt_blend", text)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert PROMPT_BLEND.problem(text) == str(err.value)[len("prompt_blend: "):]


def test_seed_blend_text_is_read_into_seeds_and_weights():
    from dreamcam.core.weighted import SEED_BLEND

    assert SEED_BLEND.parse("seed_blend", "2:0.6, 7:0.4") == ((2, 0.6), (7, 0.4))
    assert SEED_BLEND.parse("seed_blend", " 5 ,9: 3") == ((5, 1.0), (9, 3.0))
    for text, words in (("2:0.5, x:1", "whole number"), ("2.5", "whole number"), ("2:-1", ">= 0"),
                        ("-3", "from 0 to"), (f"{2**31}", "from 0 to"), ("2, 2", "listed twice"),
                        ("2:", "not a number"), ("2,,3", "empty"), ("1:0", "add up to 0")):
        with pytest.raises(ValueError, match="^seed_blend: ") as err:
            SEED_BLEND.parse("seed_blend", text)
        assert words in str(err.value), (text, str(err.value))


def test_stream_config_and_the_settings_schema_reject_a_blend_with_the_same_line():
    from dreamcam.core.config import StreamConfig
    from dreamcam.plugin.schema import SettingsError, validate

    for name, bad in (("prompt_blend", "a : 0 | b : 0"), ("seed_blend", "3, 3"), ("blend_method", "cubic"),
                      ("latent_feedback", 1.5), ("image_feedback", -0.1)):
        with pytest.raises(ValueError) as core:
            StreamConfig(**{name: bad})
        with pytest.raises(SettingsError) as app:
            validate(name, bad)
        assert str(core.value) == str(app.value), name
    config = StreamConfig(prompt_blend="a : 1 | b : 3", seed_blend="4:1, 5:1", blend_method="slerp")
    assert config.prompt_items == (("a", 1.0), ("b", 3.0)) and config.seed_items == ((4, 1.0), (5, 1.0))
    assert validate("prompt_blend", "a : 1 | b : 3") == "a : 1 | b : 3"  # settings keep the text
