"""ONNX export of the tiny UNet / TAESD encoder / decoder, checked by onnxruntime at other shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.modules import eager_modules
from dreamcam.engines import onnx_export

ort = pytest.importorskip("onnxruntime")  # part of the test extras; CI installs it


@pytest.fixture(scope="module")
def components(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def _run(path, feeds: dict[str, torch.Tensor]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]


def test_unet_export_matches_torch_at_another_batch_and_size(components, tmp_path):
    modules = eager_modules(components)
    dim = components.unet.config.cross_attention_dim
    example = onnx_export.unet_example(1, (8, 8), 77, dim, dtype=torch.float32, device=torch.device("cpu"))
    assert example[0].shape[-2:] == (9, 9)  # traced at a size that is not a multiple of 8 (see onnx_export)
    path = onnx_export.export(modules.unet, components.unet, example, onnx_export.UNET, tmp_path / "unet.onnx")
    torch.manual_seed(1)
    for shape in [(2, 4, 12, 20), (3, 4, 16, 16), (1, 4, 9, 13)]:  # 9x13 = odd sizes such as 768x432's latent
        b = shape[0]
        sample = torch.randn(shape)
        t = torch.tensor([999.0, 500.0, 20.0][:b])
        text = torch.randn(b, 77, dim)
        with torch.no_grad():
            want = modules.unet(sample, t.long(), text)
        got = _run(path, {"sample": sample, "timestep": t, "encoder_hidden_states": text})
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4)


def test_taesd_encoder_and_decoder_export_match_torch_at_another_shape(components, tmp_path):
    modules = eager_modules(components)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    latents = torch.randn(1, 4, 8, 8)
    enc = onnx_export.export(modules.encode, components.vae, (images,), onnx_export.ENCODER, tmp_path / "enc.onnx")
    dec = onnx_export.export(modules.decode, components.vae, (latents,), onnx_export.DECODER, tmp_path / "dec.onnx")
    other_images = torch.rand(2, 3, 48, 80) * 2 - 1
    other_latents = torch.randn(2, 4, 6, 10)
    with torch.no_grad():
        want_enc, want_dec = modules.encode(other_images), modules.decode(other_latents)
    np.testing.assert_allclose(_run(enc, {"images": other_images}), want_enc.numpy(), rtol=1e-3, atol=1e-4)
    got_dec = _run(dec, {"latents": other_latents})
    assert got_dec.shape == (2, 3, 48, 80)
    np.testing.assert_allclose(got_dec, want_dec.numpy(), rtol=1e-3, atol=1e-4)


def test_tensorrt_plan_profiles_fit_the_exported_models(components, tmp_path):
    """What a TensorRT build gets: input names and min/opt/max shapes that the exported ONNX accepts."""
    from dreamcam.engines.config import EngineConfig, Geometry
    from dreamcam.engines.tensorrt import plan_parts

    config = EngineConfig(geometry=Geometry(64, 96, unet_batch=2), trt_min_side=64, trt_max_side=128)
    plans = plan_parts(eager_modules(components), components.unet, components.vae, config, torch.device("cpu"))
    assert [p.part for p in plans] == ["unet", "vae_encoder", "vae_decoder"]
    unet = plans[0]
    assert unet.shapes["sample"] == ((2, 4, 8, 8), (2, 4, 8, 12), (2, 4, 16, 16))
    assert unet.shapes["encoder_hidden_states"][1] == (2, 77, components.unet.config.cross_attention_dim)
    for plan in plans:
        assert set(plan.shapes) == set(plan.spec.inputs)
        path = onnx_export.export(plan.fn, plan.owner, plan.example, plan.spec, tmp_path / f"{plan.part}.onnx")
        for which in (0, 2):  # the profile's min and max shapes
            feeds = {}
            for name in plan.spec.inputs:
                shape = plan.shapes[name][which]
                feeds[name] = torch.full(shape, 500.0) if name == "timestep" else torch.randn(shape)
            out = _run(path, feeds)
            assert out.shape[0] == plan.shapes[plan.spec.inputs[0]][which][0]


def test_sdxl_unet_export_takes_the_named_conditioning_inputs(tmp_path_factory, tmp_path):
    """SDXL's pooled text embeddings and time ids are ordinary named inputs of the exported UNet
    (dynamic batch), so the TensorRT engine builds SDXL like any other model."""
    from dreamcam.core.tiny import make_tiny_model
    from dreamcam.engines.contract import unet_conditions

    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"), "sdxl")
    comps = load_components(ModelSpec(str(folder), tiny_vae=str(folder / "taesd")))
    conditions = unet_conditions(comps)
    assert [c.name for c in conditions] == ["text_embeds", "time_ids"]
    modules = eager_modules(comps)
    dim = comps.unet.config.cross_attention_dim
    spec = onnx_export.unet_spec(conditions)
    example = onnx_export.unet_example(1, (8, 8), 77, dim, dtype=torch.float32, device=torch.device("cpu"),
                                       conditions=conditions)
    path = onnx_export.export(modules.unet, comps.unet, example, spec, tmp_path / "unet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(spec.inputs)
    torch.manual_seed(2)
    b = 3
    sample, text = torch.randn(b, 4, 12, 10), torch.randn(b, 77, dim)
    t = torch.tensor([999.0, 500.0, 20.0])
    cond = {"text_embeds": torch.randn(b, conditions[0].row_shape[0]),
            "time_ids": torch.tensor([[96.0, 80.0, 0.0, 0.0, 96.0, 80.0]] * b)}
    with torch.no_grad():
        want = modules.unet(sample, t.long(), text, **cond)
        plain = modules.unet(sample, t.long(), text, **{**cond, "text_embeds": torch.zeros_like(cond["text_embeds"])})
    assert not torch.allclose(want, plain)  # the pooled embeddings do reach the UNet
    got = _run(path, {"sample": sample, "timestep": t, "encoder_hidden_states": text, **cond})
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- ControlNets (TensorRT halves)
@pytest.fixture(scope="module")
def controlnet(components, tiny_model_dir, tmp_path_factory):
    from dreamcam.core.controlnet import load_controlnet
    from dreamcam.core.tiny import make_tiny_controlnet

    folder = make_tiny_controlnet(tiny_model_dir, tmp_path_factory.mktemp("onnx-cn") / "net", seed=4)
    return load_controlnet(str(folder), components, local_files_only=True)


def _residual_names(net) -> tuple[str, ...]:
    from dreamcam.core.controlnet import residual_shapes

    return tuple(residual_shapes(net.config, 9, 9))


def test_controlnet_export_matches_torch_at_another_batch_and_size(components, controlnet, tmp_path):
    from dreamcam.core.modules import EagerControlNet

    call, names = EagerControlNet(controlnet), _residual_names(controlnet)
    dim = components.unet.config.cross_attention_dim
    spec = onnx_export.controlnet_spec((), names)
    example = onnx_export.controlnet_example(1, (8, 8), 77, dim, dtype=torch.float32, device=torch.device("cpu"))
    assert example[3].shape == (1, 3, 72, 72)  # the control image at the traced (odd) latent size x 8
    path = onnx_export.export(call, controlnet, example, spec, tmp_path / "controlnet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(names)
    torch.manual_seed(3)
    for b, h, w in [(2, 12, 20), (3, 9, 13)]:
        sample, text = torch.randn(b, 4, h, w), torch.randn(b, 77, dim)
        t = torch.tensor([999.0, 500.0, 20.0][:b])
        control = torch.rand(b, 3, 8 * h, 8 * w)
        with torch.no_grad():
            want = call(sample, t.long(), text, control)
        got = session.run(None, {"sample": sample.numpy(), "timestep": t.numpy(), "encoder_hidden_states": text.numpy(),
                                 "controlnet_cond": control.numpy()})
        assert len(got) == len(want) == len(names)
        for g, r in zip(got, want):
            assert g.shape == tuple(r.shape)
            np.testing.assert_allclose(g, r.numpy(), rtol=1e-3, atol=1e-4)


def test_unet_export_with_residual_inputs_matches_torch(components, controlnet, tmp_path):
    from dreamcam.core.controlnet import residual_shapes
    from dreamcam.core.modules import EagerControlNet

    modules = eager_modules(components)
    names = _residual_names(controlnet)
    dim = components.unet.config.cross_attention_dim
    spec = onnx_export.unet_spec((), names)
    example = onnx_export.unet_example(1, (8, 8), 77, dim, dtype=torch.float32, device=torch.device("cpu"),
                                       residuals_of=components.unet.config)
    path = onnx_export.export(modules.unet, components.unet, example, spec, tmp_path / "unet_control.onnx")
    b, h, w = 2, 12, 10
    torch.manual_seed(5)
    sample, text, t = torch.randn(b, 4, h, w), torch.randn(b, 77, dim), torch.tensor([999.0, 20.0])
    with torch.no_grad():  # real residuals of the ControlNet (what the stream passes)
        res = dict(zip(names, EagerControlNet(controlnet)(sample, t.long(), text, torch.rand(b, 3, 8 * h, 8 * w))))
        want = modules.unet(sample, t.long(), text, **res)
        plain = modules.unet(sample, t.long(), text)
    assert {k: tuple(v.shape[1:]) for k, v in res.items()} == residual_shapes(components.unet.config, h, w)
    assert not torch.allclose(want, plain)  # the residuals do reach the UNet
    got = _run(path, {"sample": sample, "timestep": t, "encoder_hidden_states": text, **res})
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4)


def test_tensorrt_controlnet_plans_fit_the_exported_models(components, controlnet, tmp_path):
    """The ControlNet engine and the UNet with residual inputs: names and min/opt/max shapes that
    the exported ONNX accepts (at the profile's min and max), outputs in the residual order."""
    from dreamcam.core.modules import EagerControlNet
    from dreamcam.engines.config import EngineConfig, Geometry
    from dreamcam.engines.tensorrt import plan_controlled_unet, plan_controlnet

    config = EngineConfig(geometry=Geometry(64, 96, unet_batch=2), trt_min_side=64, trt_max_side=128)
    cpu = torch.device("cpu")
    plans = [plan_controlnet(EagerControlNet(controlnet), controlnet, config, cpu),
             plan_controlled_unet(eager_modules(components).unet, components.unet, config, cpu)]
    net_plan, unet_plan = plans
    assert net_plan.shapes["controlnet_cond"] == ((2, 3, 64, 64), (2, 3, 64, 96), (2, 3, 128, 128))
    assert net_plan.spec.outputs == tuple(n for n in unet_plan.spec.inputs if n.startswith("control_"))
    assert unet_plan.shapes["control_down_0"][1] == (2, 32, 8, 12)
    assert unet_plan.shapes["control_mid"][2] == (2, 64, 8, 8)  # 128 px -> latent 16 -> one downsampler: 8
    for plan in plans:
        assert set(plan.shapes) == set(plan.spec.inputs)
        path = onnx_export.export(plan.fn, plan.owner, plan.example, plan.spec, tmp_path / f"{plan.part}.onnx")
        for which in (0, 2):
            feeds = {name: torch.full(plan.shapes[name][which], 500.0) if name == "timestep"
                     else torch.randn(plan.shapes[name][which]) for name in plan.spec.inputs}
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            outs = session.run(None, {k: v.numpy() for k, v in feeds.items()})
            if plan is net_plan:  # the net's residuals have exactly the shapes the UNet engine takes
                assert [o.shape for o in outs] == [unet_plan.shapes[n][which] for n in plan.spec.outputs]
            else:
                assert outs[0].shape == plan.shapes["sample"][which]
