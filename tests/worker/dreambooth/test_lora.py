"""LoRA adapters: what trains, what the saved files hold, and that loading or fusing them gives the trained model."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from worker.dreambooth.families import family_named
from worker.dreambooth.lora import (
    KOHYA_FILE,
    LORA_FILE,
    LoraSettings,
    add_adapters,
    fuse,
    load_lora,
    lora_parameters,
    lora_state_dicts,
    save_lora,
)

# note: alpha differs from the rank, so the saved files are only right if they carry the 2x scale
SETTINGS = LoraSettings(rank=4, alpha=8)
METADATA = {"instance_prompt": "a photo of sks toy", "step": "3"}
PROMPTS = ["a photo of sks toy", "a toy on the beach"]
SD1 = family_named("sd1")


@dataclass
class Trained:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    before: dict[str, dict[str, torch.Tensor]]  # both models' weights before training
    folder: Path  # where save_lora wrote the trained adapters


def base_pipeline(model: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)


def fixed_inputs(pipeline: StableDiffusionPipeline) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, timesteps and prompt token ids, the same on every call."""
    generator = torch.Generator().manual_seed(0)
    # note: 16x16 latents leave the mid block 2x2 tokens; over a single token, self-attention's query and key
    # would get no gradient (a softmax over one key is 1 whatever they are)
    latents = torch.randn(len(PROMPTS), 4, 16, 16, generator=generator)
    ids = pipeline.tokenizer(
        PROMPTS, padding="max_length", max_length=pipeline.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    return latents, torch.tensor([10, 500]), ids


def unet_output(unet: torch.nn.Module, text_encoder: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    latents, timesteps, ids = inputs
    with torch.no_grad():
        return unet(latents, timesteps, text_encoder(ids).last_hidden_state).sample


def train_steps(unet: torch.nn.Module, text_encoder: torch.nn.Module, inputs: tuple, steps: int = 3) -> None:
    """A few AdamW steps on the adapters toward random noise targets."""
    latents, timesteps, ids = inputs
    optimizer = torch.optim.AdamW(lora_parameters(unet) + lora_parameters(text_encoder), lr=1e-2)
    target = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        prediction = unet(latents, timesteps, text_encoder(ids).last_hidden_state).sample
        torch.nn.functional.mse_loss(prediction, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """UNet and text encoder adapters trained a few steps, and saved."""
    pipeline = base_pipeline(tiny_model)
    unet, text_encoder = pipeline.unet, pipeline.text_encoder
    add_adapters(unet, (text_encoder,), SETTINGS)
    before = {"unet": weights(unet), "text_encoder": weights(text_encoder)}
    train_steps(unet.train(), text_encoder.train(), fixed_inputs(pipeline))
    folder = tmp_path_factory.mktemp("lora")
    save_lora(folder, unet.eval(), (text_encoder.eval(),), SETTINGS, SD1, METADATA)
    return Trained(unet, text_encoder, before, folder)


def test_adapters_freeze_the_base_and_train_in_fp32(tiny_model: Path):
    pipeline = base_pipeline(tiny_model)
    unet, text_encoder = pipeline.unet.half(), pipeline.text_encoder.half()
    targets = {unet: ("to_q", "to_k", "to_v", "to_out.0"), text_encoder: ("q_proj", "k_proj", "v_proj", "out_proj")}
    projections = {
        model: {name for name, _ in model.named_modules() if name.endswith(ends)} for model, ends in targets.items()
    }
    add_adapters(unet, (text_encoder,), SETTINGS)
    for model in (unet, text_encoder):
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(".lora_" in name for name, _ in trainable)
        assert {id(p) for _, p in trainable} == {id(p) for p in lora_parameters(model)}
        assert all(p.dtype == torch.float32 for _, p in trainable)
        assert all(p.dtype == torch.float16 for name, p in model.named_parameters() if ".lora_" not in name)
        # every attention projection has an adapter
        assert {name.split(".lora_")[0] for name, _ in trainable} == projections[model]


def test_training_changes_only_the_adapters(trained: Trained):
    for name, model in (("unet", trained.unet), ("text_encoder", trained.text_encoder)):
        after = model.state_dict()
        changed = {key for key, value in trained.before[name].items() if not torch.equal(value, after[key])}
        up_weights = {key for key in after if ".lora_B." in key}
        # note: Gaussian initialisation starts every up weight at zero, so every one must have moved
        assert up_weights and up_weights <= changed
        assert all(".lora_" in key for key in changed)


def test_saved_lora_reproduces_the_trained_model(trained: Trained, tiny_model: Path):
    pipeline = base_pipeline(tiny_model)
    inputs = fixed_inputs(pipeline)
    expected = unet_output(trained.unet, trained.text_encoder, inputs)
    assert not torch.allclose(unet_output(pipeline.unet, pipeline.text_encoder, inputs), expected, atol=1e-3)
    load_lora(pipeline, trained.folder)
    torch.testing.assert_close(unet_output(pipeline.unet, pipeline.text_encoder, inputs), expected)
    keys = load_file(trained.folder / LORA_FILE).keys()
    assert any(key.startswith("unet.") for key in keys)
    assert any(key.startswith("text_encoder.text_model.") for key in keys)


def test_loading_again_replaces_the_earlier_lora(trained: Trained, tiny_model: Path):
    pipeline = base_pipeline(tiny_model)
    load_lora(pipeline, trained.folder)
    load_lora(pipeline, trained.folder)
    assert list(pipeline.unet.peft_config) == ["default_0"] and len(pipeline.text_encoder.peft_config) == 1
    inputs = fixed_inputs(pipeline)
    expected = unet_output(trained.unet, trained.text_encoder, inputs)
    torch.testing.assert_close(unet_output(pipeline.unet, pipeline.text_encoder, inputs), expected)


def test_unet_only_lora_round_trips(tiny_model: Path, tmp_path: Path):
    pipeline = base_pipeline(tiny_model)
    unet = pipeline.unet
    add_adapters(unet, (), LoraSettings())
    with torch.no_grad():
        for parameter in lora_parameters(unet):
            parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    save_lora(tmp_path, unet, (), LoraSettings(), SD1)
    assert all(key.startswith("unet.") for key in load_file(tmp_path / LORA_FILE))
    assert all(key.startswith("lora_unet_") for key in load_file(tmp_path / KOHYA_FILE))
    fresh = base_pipeline(tiny_model)
    load_lora(fresh, tmp_path)
    inputs = fixed_inputs(fresh)
    torch.testing.assert_close(
        unet_output(fresh.unet, fresh.text_encoder, inputs), unet_output(unet, pipeline.text_encoder, inputs)
    )


def test_kohya_file_has_kohya_keys_and_loads_to_the_same_model(trained: Trained, tiny_model: Path):
    tensors = load_file(trained.folder / KOHYA_FILE)
    assert all(key.startswith(("lora_unet_", "lora_te_")) for key in tensors)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight" in tensors
    modules = {key.split(".")[0] for key in tensors}
    for module in modules:
        assert {f"{module}.lora_down.weight", f"{module}.lora_up.weight", f"{module}.alpha"} <= tensors.keys()
        assert tensors[f"{module}.alpha"].item() == tensors[f"{module}.lora_down.weight"].shape[0]
    # diffusers reads kohya's layout too: the file must give the trained model back
    pipeline = base_pipeline(tiny_model)
    pipeline.load_lora_weights(trained.folder, weight_name=KOHYA_FILE)
    inputs = fixed_inputs(pipeline)
    expected = unet_output(trained.unet, trained.text_encoder, inputs)
    torch.testing.assert_close(unet_output(pipeline.unet, pipeline.text_encoder, inputs), expected)


def test_headers_say_what_the_files_are(trained: Trained):
    for name in (LORA_FILE, KOHYA_FILE):
        with safe_open(trained.folder / name, framework="pt") as file:
            header = file.metadata()
        assert header.items() >= METADATA.items()
        assert header["modelspec.architecture"] == "stable-diffusion-v1/lora"
        assert header["modelspec.sai_model_spec"] == "1.0.0"
        assert header["modelspec.title"] == trained.folder.name
        assert (header["lora_rank"], header["lora_alpha"]) == ("4", "8")


def test_fuse_gives_the_adapter_model_as_plain_models_and_leaves_the_adapters(trained: Trained, tiny_model: Path):
    pipeline = base_pipeline(tiny_model)
    inputs = fixed_inputs(pipeline)
    expected = unet_output(trained.unet, trained.text_encoder, inputs)
    unet, (text_encoder,) = fuse(trained.unet, (trained.text_encoder,))
    torch.testing.assert_close(unet_output(unet, text_encoder, inputs), expected)
    assert unet.state_dict().keys() == pipeline.unet.state_dict().keys()
    assert text_encoder.state_dict().keys() == pipeline.text_encoder.state_dict().keys()
    assert not hasattr(unet, "peft_config") and not hasattr(text_encoder, "peft_config")
    # the trained models keep their adapters and their outputs
    assert lora_parameters(trained.unet) and all(p.requires_grad for p in lora_parameters(trained.unet))
    torch.testing.assert_close(unet_output(trained.unet, trained.text_encoder, inputs), expected)


def test_state_dicts_see_through_compiled_models(trained: Trained):
    unet_layers, (text_layers,) = lora_state_dicts(trained.unet, (trained.text_encoder,))
    compiled = lora_state_dicts(torch.compile(trained.unet), (torch.compile(trained.text_encoder),))
    assert compiled[0].keys() == unet_layers.keys() and compiled[1][0].keys() == text_layers.keys()
    assert all(".lora" in key and "_orig_mod" not in key for key in unet_layers.keys() | text_layers.keys())
