"""Load downloads with whatever diffusers and transformers are installed; report what each load left out
and what the loaded model computes.

    python load_downloads.py MANIFEST.json OUT_DIR

Standalone on purpose: tests/compat runs it with the project's own stack and with an older one
(.venv-compat), where the project itself is not installed. For each download in the manifest it records
every weight the loaders reported missing, unexpected or mismatched, every warning they logged, and, in
OUT_DIR/<index>.safetensors, the text embedding of the manifest's prompt and the UNet's output on a
fixed input (latents drawn from seed 0, the manifest's timestep, that embedding).
"""

import importlib.metadata
import json
import logging
import sys
import traceback
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

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


def load_folder(item: dict) -> tuple[dict, dict]:
    """A diffusers folder, part by part (each load's report), then as a whole pipeline."""
    folder, reports, parts = item["path"], {}, {}
    for name, cls in (("text_encoder", CLIPTextModel), ("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        parts[name], info = cls.from_pretrained(folder, subfolder=name, output_loading_info=True)
        reports[name] = {key: sorted(map(str, info.get(key) or [])) for key in
                         ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}  # fmt: skip
    StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    parts["tokenizer"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    return parts, reports


def load_single(item: dict) -> tuple[dict, dict]:
    pipeline = StableDiffusionPipeline.from_single_file(
        item["path"], config=item["config"], local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    return vars_of(pipeline), {}


def load_lora(item: dict) -> tuple[dict, dict]:
    pipeline = StableDiffusionPipeline.from_pretrained(item["base"], safety_checker=None, requires_safety_checker=False)
    pipeline.load_lora_weights(str(Path(item["path"]).parent), weight_name=Path(item["path"]).name)
    return vars_of(pipeline), {}


def vars_of(pipeline) -> dict:
    return {name: getattr(pipeline, name) for name in ("text_encoder", "unet", "vae", "tokenizer")}


LOADERS = {"diffusers": load_folder, "single": load_single, "lora": load_lora}


@torch.no_grad()
def outputs(parts: dict, prompt: str, timestep: int) -> dict[str, torch.Tensor]:
    tokenizer, text_encoder, unet = parts["tokenizer"], parts["text_encoder"].float(), parts["unet"].float()
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    text = text_encoder(ids)[0]
    size = unet.config.sample_size
    latents = torch.randn((1, unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(0))
    prediction = unet(latents, torch.tensor([timestep]), encoder_hidden_states=text).sample
    return {"text": text.contiguous(), "unet": prediction.contiguous()}


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
