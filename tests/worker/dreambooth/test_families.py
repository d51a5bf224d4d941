"""Every family on its builtin tiny model, on the CPU: detection, conditioning, a few steps of full and of LoRA
training (finite loss, the right parts change), SD 2.x's v-prediction target, SDXL's size and crop conditioning,
LoRA files that load in diffusers, and generations with the family's pipeline."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file

from formats.families import BUILTIN_MODELS, UnknownFamily, detect_family
from tests.worker.dreambooth.helpers import changed, weights
from worker.dreambooth.components import load_components, resolve_base_model
from worker.dreambooth.config import TrainConfig
from worker.dreambooth.data import LatentSource, load_photo
from worker.dreambooth.families import config_reader, family_named, family_of
from worker.dreambooth.lora import KOHYA_FILE, LORA_FILE
from worker.dreambooth.loss import training_target
from worker.dreambooth.render import PipelineCache, RenderRequest, TrainedModel, render
from worker.dreambooth.train import train

FAMILY_OF = {"builtin:tiny": "sd1", "builtin:tiny-sd2": "sd2", "builtin:tiny-sdxl": "sdxl"}
TEXT_ENCODERS = {"sd1": ("text_encoder",), "sd2": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}


@pytest.fixture(scope="module")
def family_models(models_dir: Path) -> dict[str, Path]:
    return {name: Path(resolve_base_model(name, models_dir)) for name in FAMILY_OF}


@pytest.mark.parametrize("base_model", FAMILY_OF)
def test_each_builtin_is_detected_from_its_configs(family_models: dict[str, Path], base_model: str):
    folder = family_models[base_model]
    assert family_of(str(folder)).info.name == FAMILY_OF[base_model]
    assert BUILTIN_MODELS[base_model.removeprefix("builtin:")].family == FAMILY_OF[base_model]


def test_a_folder_that_is_no_stable_diffusion_model_is_refused(tmp_path: Path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(UnknownFamily, match="text_encoder"):
        detect_family(config_reader(str(tmp_path)))
    (tmp_path / "model_index.json").write_text('{"text_encoder": [null, null], "text_encoder_2": ["t", "C"]}')
    with pytest.raises(UnknownFamily, match="refiner"):
        detect_family(config_reader(str(tmp_path)))


def test_sdxl_builtin_has_sdxls_topology(family_models: dict[str, Path]):
    parts = load_components("builtin:tiny-sdxl", family_models["builtin:tiny-sdxl"].parent)
    unet = parts.unet.config
    assert unet.addition_embed_type == "text_time" and tuple(unet.transformer_layers_per_block) == (1, 2, 10)
    assert tuple(unet.down_block_types) == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert [type(m).__name__ for m in parts.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    width = sum(m.config.hidden_size for m in parts.text_encoders)
    assert unet.cross_attention_dim == width
    conditioning = parts.family.encode(parts.tokenizers, parts.text_encoders, ["a photo of sks dog", "a dog"])
    assert conditioning.hidden.shape == (2, 77, width)
    assert conditioning.pooled.shape == (2, parts.text_encoders[1].config.projection_dim)
    assert unet.projection_class_embeddings_input_dim == conditioning.pooled.shape[1] + 6 * unet.addition_time_embed_dim


def test_sd2_builtin_predicts_velocity_and_the_target_is_the_velocity(models_dir: Path):
    parts = load_components("builtin:tiny-sd2", models_dir)
    scheduler = parts.noise_scheduler
    assert isinstance(scheduler, DDPMScheduler) and scheduler.config.prediction_type == "v_prediction"
    assert parts.text_encoder.config.hidden_act == "gelu" and parts.unet.config.use_linear_projection
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10, 900])
    # note: v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0 (Salimans & Ho), computed here from the betas
    alpha_bar = torch.cumprod(1 - scheduler.betas, dim=0)[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    torch.testing.assert_close(training_target(scheduler, latents, noise, timesteps), expected)


def test_sdxl_time_ids_are_each_photos_original_size_crop_and_target(tmp_path: Path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), "red").save(path)
    photo = load_photo(path, 64)
    assert photo.size == (128, 64)

    class Encoder(torch.nn.Module):  # note: latents' statistics do not matter here, only the time ids
        config = type("Config", (), {"scaling_factor": 1.0, "block_out_channels": (1, 1, 1, 1)})

        def encode(self, pixels):
            dist = type("Dist", (), {"mean": pixels[:, :4, ::8, ::8], "std": pixels[:, :4, ::8, ::8] * 0})
            return type("Out", (), {"latent_dist": dist})

        @property
        def device(self):
            return torch.device("cpu")

        @property
        def dtype(self):
            return torch.float32

    centred = LatentSource(Encoder(), [photo], 64, center_crop=True, random_flip=False)
    _, ids = centred(torch.tensor([0]), torch.Generator(), torch.Generator())
    assert ids.tolist() == [[100, 200, 0, 32, 64, 64]]
    random = LatentSource(Encoder(), [photo], 64, center_crop=False, random_flip=True)
    lefts = {random(torch.tensor([0]), torch.Generator().manual_seed(s), torch.Generator())[1][0, 3].item()
             for s in range(12)}  # fmt: skip
    assert len(lefts) > 1 and all(0 <= left <= 64 for left in lefts)


@pytest.fixture(scope="module")
def family_runs(make_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory):
    """Two steps of full training (text encoders too) and of LoRA training (text encoders too) per family."""
    runs = {}
    for base_model in ("builtin:tiny-sd2", "builtin:tiny-sdxl"):
        for method in ("full", "lora"):
            config = make_config(
                tmp_path_factory.mktemp(f"{base_model[8:]}-{method}"), base_model=base_model, training_method=method,
                train_text_encoder=True, max_train_steps=2, validation_steps=1, num_validation_images=1,
                validation_inference_steps=2, lora_rank=4,
            )  # fmt: skip
            runs[base_model, method] = config, train(config)
    return runs


@pytest.mark.parametrize("base_model", ["builtin:tiny-sd2", "builtin:tiny-sdxl"])
def test_full_training_changes_the_unet_and_the_text_encoders_only(
    family_runs: dict, family_models: dict[str, Path], base_model: str
):
    _, result = family_runs[base_model, "full"]
    assert not result.stopped and result.final_step == 2
    base, trained = family_models[base_model], result.pipeline_dir
    family = FAMILY_OF[base_model]
    for part in ("unet", *TEXT_ENCODERS[family]):
        assert changed(weights(trained / part), weights(base / part)), part
    assert not changed(weights(trained / "vae"), weights(base / "vae"))
    assert family_of(str(trained)).info.name == family
    # note: the kept step 1 holds every trained part, laid out like the pipeline
    assert sorted(p.name for p in result.kept_steps[1].iterdir()) == sorted(["unet", *TEXT_ENCODERS[family]])
    assert sorted({s.step for s in result.samples}) == [1, 2]


@pytest.mark.parametrize("base_model", ["builtin:tiny-sd2", "builtin:tiny-sdxl"])
def test_lora_files_have_the_familys_prefixes_and_load_in_diffusers(
    family_runs: dict, family_models: dict[str, Path], base_model: str
):
    config, result = family_runs[base_model, "lora"]
    family = FAMILY_OF[base_model]
    kohya = load_file(result.checkpoints["lora_kohya"])
    prefixes = {key.split("_text_model")[0] if "_text_model" in key else "lora_unet" for key in kohya}
    assert prefixes == ({"lora_unet", "lora_te1", "lora_te2"} if family == "sdxl" else {"lora_unet", "lora_te"})
    diffusers_keys = {key.split(".")[0] for key in load_file(result.checkpoints["lora"])}
    assert diffusers_keys == {"unet", *TEXT_ENCODERS[family]}
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    exported = cls.from_pretrained(result.pipeline_dir)
    for weight_name in (LORA_FILE, KOHYA_FILE):
        pipeline = cls.from_pretrained(family_models[base_model])
        pipeline.load_lora_weights(config.output_dir / "lora", weight_name=weight_name)
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
        for part in ("unet", *TEXT_ENCODERS[family]):
            expected, loaded = getattr(exported, part).state_dict(), getattr(pipeline, part).state_dict()
            for key, value in expected.items():
                torch.testing.assert_close(loaded[key], value, atol=1e-5, rtol=1e-4, msg=f"{weight_name} {part} {key}")


@pytest.mark.parametrize("base_model", ["builtin:tiny-sd2", "builtin:tiny-sdxl"])
def test_generations_use_the_familys_pipeline(family_runs: dict, base_model: str, tmp_path: Path, models_dir: Path):
    _, result = family_runs[base_model, "lora"]
    request = RenderRequest("a photo of sks toy", None, "ddim", 2, 5.0, seed=3, num_images=1, resolution=64)
    cache = PipelineCache()
    for model in (
        TrainedModel(pipeline_dir=result.pipeline_dir),
        TrainedModel(weights_dir=result.kept_steps[1], weights_format="lora", base_model=base_model,
                     models_dir=models_dir),
    ):  # fmt: skip
        loaded, _ = cache.get(model)
        assert type(loaded.pipeline).__name__ == family_named(FAMILY_OF[base_model]).pipeline_class.__name__
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        out.mkdir()
        [image] = render(loaded, request, out)
        with Image.open(image.path) as png:
            assert png.size == (64, 64)
