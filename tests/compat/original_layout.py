"""The weights' names and shapes of Stable Diffusion 1.5's original checkpoint, read off the original code.

    python original_layout.py OUT.json            # weight names and shapes
    python original_layout.py OUT.json --modules  # module names, as AUTOMATIC1111 maps LoRA keys onto them

Runs in .venv-compat, which holds the original latent-diffusion code (`ldm`, from stable-diffusion-sdkit:
Stability AI's repository, the one AUTOMATIC1111 runs) and transformers 4.x. It builds, on the meta device
(no memory, no download), the modules SD 1.5's v1-inference.yaml names with that file's parameters, and
writes every state-dict name the checkpoint loads into, with its shape: `model.diffusion_model.*` (ldm's
UNetModel), `first_stage_model.*` (ldm's AutoencoderKL) and `cond_stage_model.transformer.*` (the
FrozenCLIPEmbedder's transformers CLIPTextModel, ViT-L/14's text tower).
"""

import json
import sys
import types

import torch

# note: ldm's AutoencoderKL subclasses a LightningModule only to train; a plain Module is all it needs here
sys.modules["pytorch_lightning"] = types.SimpleNamespace(LightningModule=torch.nn.Module)

from ldm.models.autoencoder import AutoencoderKL  # noqa: E402
from ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

# configs/stable-diffusion/v1-inference.yaml: model.params.unet_config.params
UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True, transformer_depth=1,
    context_dim=768, use_checkpoint=True, legacy=False,
)  # fmt: skip
# ... model.params.first_stage_config.params
VAE = dict(
    embed_dim=4, lossconfig={"target": "torch.nn.Identity"},
    ddconfig=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                  num_res_blocks=2, attn_resolutions=[], dropout=0.0),
)  # fmt: skip
# openai/clip-vit-large-patch14's text config, which FrozenCLIPEmbedder loads
TEXT = CLIPTextConfig(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)  # fmt: skip
# The SD 1.5 checkpoint also carries the text model's position ids (saved by the transformers of 2022, which
# kept that buffer in the state dict); transformers 4.31 and later no longer list it.
POSITION_IDS = {"cond_stage_model.transformer.text_model.embeddings.position_ids": [1, 77]}


def shapes(prefix: str, module: torch.nn.Module) -> dict[str, list[int]]:
    return {prefix + name: list(tensor.shape) for name, tensor in module.state_dict().items()}


def main(out: str, what: str = "--weights") -> None:
    with torch.device("meta"):
        modules = {
            "model.diffusion_model.": UNetModel(**UNET),
            "first_stage_model.": AutoencoderKL(**VAE),
            "cond_stage_model.transformer.": CLIPTextModel(TEXT),
        }
    if what == "--modules":
        # note: AUTOMATIC1111 names the UNet's modules from sd_model.model ("diffusion_model.*") and the text
        # encoder's from the FrozenCLIPEmbedder ("transformer.*"), dots as underscores
        unet, text = modules["model.diffusion_model."], modules["cond_stage_model.transformer."]
        names = ["diffusion_model." + name for name, _ in unet.named_modules()]
        names += ["transformer." + name for name, _ in text.named_modules()]
        with open(out, "w") as file:
            json.dump(sorted(name.replace(".", "_") for name in names), file, indent=0)
        return
    names = {}
    for prefix, module in modules.items():
        names |= shapes(prefix, module)
    names = {name: shape for name, shape in names.items() if not name.startswith("first_stage_model.loss.")}
    names.setdefault(*next(iter(POSITION_IDS.items())))
    with open(out, "w") as file:
        json.dump(names, file, indent=0, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
