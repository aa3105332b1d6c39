"""Proof: the real loading code loads saved folders, single-file checkpoints and LoRAs, and every
user mistake becomes a ModelLoadError that says what to do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelLoadError, ModelSpec, detect_family, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_lora, make_tiny_model, save_single_file


def _run_one_frame(comp):
    stream = StreamDiffusion(comp, StreamConfig(width=64, height=64, t_index_list=(20, 40), cfg_type="full",
                                                prompt="the cat"))
    out = stream(np.full((64, 64, 3), 100, dtype=np.uint8))
    assert out.shape == (64, 64, 3) and out.std() > 1


@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl"])
def test_saved_folder_loads_with_its_family_and_runs(tmp_path, family):
    folder = make_tiny_model(tmp_path / family, family)
    for tiny_vae, kind in [(str(folder / "taesd"), "tiny"), (None, "full")]:
        comp = load_components(ModelSpec(str(folder), tiny_vae=tiny_vae, local_files_only=True))
        assert comp.family == family and comp.vae_kind == kind
        assert type(comp.scheduler).__name__ == "LCMScheduler" and comp.prediction_type == "epsilon"
        assert (comp.text_encoder_2 is not None) == (family == "sdxl")
        _run_one_frame(comp)


def test_single_file_checkpoint_loads_the_same_weights(tmp_path, tiny_sd15_dir):
    path = save_single_file(tiny_sd15_dir, tmp_path / "tiny-sd15.safetensors")
    comp = load_components(ModelSpec(str(path), tiny_vae=None, config=str(tiny_sd15_dir), local_files_only=True))
    ref = load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=None, local_files_only=True))
    assert comp.family == "sd15"
    for part in ("unet", "vae", "text_encoder"):
        got, want = getattr(comp, part).state_dict(), getattr(ref, part).state_dict()
        assert set(got) == set(want)
        for key in want:
            assert torch.equal(got[key], want[key]), (part, key)
    _run_one_frame(comp)


def test_single_file_without_configs_offline_says_what_to_pass(tmp_path, tiny_sd15_dir):
    path = save_single_file(tiny_sd15_dir, tmp_path / "tiny.safetensors")
    with pytest.raises(ModelLoadError) as err:
        load_components(ModelSpec(str(path), tiny_vae=None, local_files_only=True))
    assert "--model-config FOLDER" in str(err.value) and "config=" not in str(err.value)


def test_single_file_with_model_config_from_the_cli_settings_loads(tmp_path, tiny_sd15_dir):
    """--model-config is a real option: AppSettings.model_config reaches ModelSpec.config."""
    from dreamcam.plugin.pipeline import model_spec
    from dreamcam.plugin.settings import AppSettings

    path = save_single_file(tiny_sd15_dir, tmp_path / "tiny.safetensors")
    app = AppSettings(model=str(path), model_config=str(tiny_sd15_dir), tiny_vae="none")
    spec = model_spec(app, "cpu", "float32", local_files_only=True)
    assert spec.config == str(tiny_sd15_dir)
    assert load_components(spec).family == "sd15"


def test_local_folder_uses_its_own_tiny_vae_offline(tmp_path, monkeypatch):
    """The default tiny VAE ("auto") of a local folder is the folder's own taesd/: no download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = make_tiny_model(tmp_path / "m", "sd21")
    comp = load_components(ModelSpec(str(folder), tiny_vae="auto"))
    assert comp.vae_kind == "tiny"
    reference = load_components(ModelSpec(str(folder), tiny_vae=str(folder / "taesd")))
    for key, value in reference.vae.state_dict().items():
        assert torch.equal(comp.vae.state_dict()[key], value), key
    import shutil

    shutil.rmtree(folder / "taesd")  # without one, offline: the error names the real fix
    with pytest.raises(ModelLoadError) as err:
        load_components(ModelSpec(str(folder), tiny_vae="auto"))
    text = str(err.value)
    assert "--tiny-vae none" in text and "--tiny-vae FOLDER" in text and "stabilityai/sd-turbo" not in text


def test_broken_model_index_names_the_file(tmp_path):
    folder = make_tiny_model(tmp_path / "m", "sd21")
    (folder / "model_index.json").write_text('{"unet": ["diffusers", ')
    with pytest.raises(ModelLoadError) as err:
        load_components(ModelSpec(str(folder), tiny_vae=None, local_files_only=True))
    assert str(folder / "model_index.json") in str(err.value) and "damaged" in str(err.value)


def test_lora_is_fused_into_the_unet(tmp_path, tiny_sd15_dir):
    lora = make_tiny_lora(tiny_sd15_dir, tmp_path / "lora")
    comp = load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=None, lcm_lora=str(lora), local_files_only=True))
    ref = load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=None, local_files_only=True))
    state = comp.unet.state_dict()
    assert not any("lora" in k for k in state)  # fused and unloaded: a plain UNet again
    weights = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    up, down = weights[f"unet.{name}.lora.up.weight"], weights[f"unet.{name}.lora.down.weight"]
    expected = ref.unet.state_dict()[name + ".weight"] + up @ down  # alpha == rank: scale 1
    torch.testing.assert_close(state[name + ".weight"], expected)
    _run_one_frame(comp)


def test_unknown_hub_id_offline_names_the_download_command():
    with pytest.raises(ModelLoadError) as err:
        load_components(ModelSpec("nobody-here/no-such-model-xyz", local_files_only=True))
    text = str(err.value)
    assert "nobody-here/no-such-model-xyz" in text and "huggingface-cli download nobody-here/no-such-model-xyz" in text
    assert "Traceback" not in text


def test_unreachable_hub_behind_a_wrapped_error_says_so():
    from dreamcam.core.loading import _explain

    try:  # what AutoencoderTiny.from_pretrained raises without a network
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as inner:
            raise OSError("madebyollin/taesd does not appear to have a file named config.json.") from inner
    except OSError as exc:
        text = str(_explain("tiny VAE", "madebyollin/taesd", exc, local_only=False))
    assert "could not reach the Hugging Face Hub" in text
    assert "huggingface-cli download madebyollin/taesd" in text


def test_hf_hub_offline_env_is_honoured(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_components(ModelSpec("nobody-here/no-such-model-xyz"))


@pytest.mark.parametrize("name, words", [
    ("/no/such/folder", "no such file or folder"),
    ("./missing-model.safetensors", "no such file or folder"),
    ("not a model id", "no such file or folder"),
])
def test_missing_paths_are_named(name, words):
    with pytest.raises(ModelLoadError, match=words) as err:
        load_components(ModelSpec(name, local_files_only=True))
    assert repr(name) in str(err.value)


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_components(ModelSpec(str(tmp_path), local_files_only=True))


def test_wrong_tiny_vae_and_bad_device_or_dtype(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="tiny VAE") as err:
        load_components(ModelSpec(str(tiny_model_dir), tiny_vae="/no/taesd", local_files_only=True))
    assert "madebyollin/taesd" in str(err.value) and "sd-turbo" not in str(err.value)  # the example fits
    with pytest.raises(ModelLoadError, match="LoRA '/no/lora': no such file or folder") as err:
        load_components(ModelSpec(str(tiny_model_dir), tiny_vae=None, lcm_lora="/no/lora", local_files_only=True))
    assert "lcm-lora" in str(err.value) and "sd-turbo" not in str(err.value)
    with pytest.raises(ModelLoadError, match="dtype"):
        load_components(ModelSpec(str(tiny_model_dir), dtype="float8", local_files_only=True))
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            load_components(ModelSpec(str(tiny_model_dir), device="cuda", local_files_only=True))


def test_family_detection_from_unet_config():
    assert detect_family({"cross_attention_dim": 768}) == "sd15"
    assert detect_family({"cross_attention_dim": 1024}) == "sd21"
    assert detect_family({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}) == "sdxl"
    with pytest.raises(ModelLoadError, match="unsupported"):
        detect_family({"cross_attention_dim": 4096})


def test_string_dtype_is_applied(tiny_model_dir):
    comp = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"),
                                     dtype="bfloat16", local_files_only=True))
    assert comp.dtype == torch.bfloat16 and comp.unet.dtype == torch.bfloat16
    out = StreamDiffusion(comp, StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none"))(
        np.zeros((64, 64, 3), dtype=np.uint8))
    assert out.shape == (64, 64, 3)
