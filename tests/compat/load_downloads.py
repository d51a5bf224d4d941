"""Load downloads with whatever diffusers and transformers are installed; report what each load left out
and what the loaded model computes.

    python load_downloads.py MANIFEST.json OUT_DIR

Standalone on purpose: tests/compat runs it with the project's own stack and with an older one
(.venv-compat), where the project itself is not installed. For each download in the manifest it records
every weight the loaders reported missing, unexpected or mismatched, every warning they logged, and, in
OUT_DIR/<index>.safetensors, the text embedding of the manifest's prompt and the UNet's output on a
fixed input (latents drawn from seed 0, the manifest's timestep, that embedding). SDXL models (a second text
encoder in the base's model_index.json) are conditioned as SDXL is: both encoders' penultimate layers, the
second's pooled embedding and size "time ids".
"""

import importlib.metadata
import json
import logging
import sys
import traceback
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

LOGGERS = ("diffusers", "transformers", "peft")


class Recorded(logging.Handler):
    """Every warning the libraries log or warn while a download loads."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")

    def __enter__(self) -> "Recorded":
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> None:
        self._warnings.__exit__(*exc)
        self.messages += [f"warning: {caught.message}" for caught in self._caught]
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)


def is_sdxl(folder: str) -> bool:
    return "text_encoder_2" in json.loads((Path(folder) / "model_index.json").read_text())


def pipeline_class(folder: str) -> tuple[type, dict]:
    """The folder's pipeline class and its from_pretrained options."""
    if is_sdxl(folder):
        return StableDiffusionXLPipeline, {}
    return StableDiffusionPipeline, {"safety_checker": None, "requires_safety_checker": False}


def load_folder(item: dict) -> tuple[dict, dict]:
    """A diffusers folder, part by part (each load's report), then as a whole pipeline."""
    folder, reports, parts = item["path"], {}, {}
    classes = [("text_encoder", CLIPTextModel), ("unet", UNet2DConditionModel), ("vae", AutoencoderKL)]
    if is_sdxl(folder):
        classes.append(("text_encoder_2", CLIPTextModelWithProjection))
    for name, cls in classes:
        parts[name], info = cls.from_pretrained(folder, subfolder=name, output_loading_info=True)
        reports[name] = {key: sorted(map(str, info.get(key) or [])) for key in
                         ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}  # fmt: skip
    cls, options = pipeline_class(folder)
    cls.from_pretrained(folder, **options)
    for name in ("tokenizer", "tokenizer_2") if is_sdxl(folder) else ("tokenizer",):
        parts[name] = CLIPTokenizer.from_pretrained(folder, subfolder=name)
    return parts, reports


def load_single(item: dict) -> tuple[dict, dict]:
    cls, options = pipeline_class(item["config"])
    pipeline = cls.from_single_file(item["path"], config=item["config"], local_files_only=True, **options)
    return vars_of(pipeline), {}


def load_lora(item: dict) -> tuple[dict, dict]:
    cls, options = pipeline_class(item["base"])
    pipeline = cls.from_pretrained(item["base"], **options)
    pipeline.load_lora_weights(str(Path(item["path"]).parent), weight_name=Path(item["path"]).name)
    return vars_of(pipeline), {}


def vars_of(pipeline) -> dict:
    names = ("text_encoder", "text_encoder_2", "unet", "vae", "tokenizer", "tokenizer_2")
    return {name: getattr(pipeline, name) for name in names if getattr(pipeline, name, None) is not None}


LOADERS = {"diffusers": load_folder, "single": load_single, "lora": load_lora}


@torch.no_grad()
def outputs(parts: dict, prompt: str, timestep: int) -> dict[str, torch.Tensor]:
    unet = parts["unet"].float()
    size = unet.config.sample_size
    if "text_encoder_2" in parts:
        hidden, pooled = [], None
        for suffix in ("", "_2"):
            tokenizer, text_encoder = parts["tokenizer" + suffix], parts["text_encoder" + suffix].float()
            output = text_encoder(token_ids(tokenizer, prompt), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]
        text = torch.cat(hidden, dim=-1)
        side = size * 8
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[side, side, 0, 0, side, side]], dtype=text.dtype)}
        extra = {"added_cond_kwargs": added}
    else:
        text, extra = parts["text_encoder"].float()(token_ids(parts["tokenizer"], prompt))[0], {}
    latents = torch.randn((1, unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(0))
    prediction = unet(latents, torch.tensor([timestep]), encoder_hidden_states=text, **extra).sample
    return {"text": text.contiguous(), "unet": prediction.contiguous()}


def token_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def main(manifest_path: str, out_dir: str) -> None:
    manifest = json.loads(Path(manifest_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for index, item in enumerate(manifest["downloads"]):
        try:
            with Recorded() as recorded:
                parts, reports = LOADERS[item["kind"]](item)
            save_file(outputs(parts, manifest["prompt"], manifest["timestep"]), out / f"{index}.safetensors")
            results[item["name"]] = {
                "reports": reports,
                "warnings": recorded.messages,
                "outputs": f"{index}.safetensors",
            }
        except Exception:
            results[item["name"]] = {"error": traceback.format_exc()[-3000:]}
    versions = {name: importlib.metadata.version(name) for name in ("torch", "diffusers", "transformers", "peft")}
    (out / "results.json").write_text(json.dumps({"versions": versions, "results": results}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
