"""kohya-format LoRA files name their modules as AUTOMATIC1111 and ComfyUI derive them for SD 1.5, checked at
full size (every attention projection of the UNet and the text encoder).

The names are built by the worker's own LoRA code (worker/dreambooth/lora.py) on SD 1.5's architecture
with the base weights on the meta device. What each tool accepts is public fact:
- ComfyUI (comfy/lora.py): `lora_unet_` + a diffusers UNet weight's module path with dots as underscores;
  `lora_te_text_model_encoder_layers_{layer}_{self_attn_q_proj|...|mlp_fc2}` for SD 1.x's CLIP;
- AUTOMATIC1111 (extensions-builtin/Lora/networks.py): convert_diffusers_name_to_compvis maps the name onto
  the original model's module names (ldm's UNetModel under `diffusion_model`, the CLIP text model under
  `transformer`), which tests/compat/original_layout.py lists from the original code.
"""

import json
import re
import subprocess
from pathlib import Path

import torch
from peft.utils import get_peft_model_state_dict

from worker.dreambooth.lora import ADAPTER, LoraSettings, add_adapters, hub_named, kohya_layers
from worker.dreambooth.tiny import SIZES, _make_text_encoder, _make_unet, _write_vocab_files

ROOT = Path(__file__).resolve().parents[2]
COMPAT_PYTHON = ROOT / ".venv-compat" / "bin" / "python"
COMFY_CLIP_PARTS = ("mlp_fc1", "mlp_fc2", "self_attn_k_proj", "self_attn_q_proj", "self_attn_v_proj",
                    "self_attn_out_proj")  # fmt: skip


def kohya_modules(tmp_path: Path) -> tuple[set[str], set[str]]:
    """The module names of a full-size LoRA file: the UNet's and the text encoder's."""
    from transformers import CLIPTokenizer

    _write_vocab_files(tmp_path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    with torch.device("meta"):
        unet, text_encoder = _make_unet(SIZES["full"]), _make_text_encoder(SIZES["full"], tokenizer)
        add_adapters(unet, (text_encoder,), LoraSettings(rank=4))
    layers = kohya_layers(
        get_peft_model_state_dict(unet, adapter_name=ADAPTER),
        (hub_named(get_peft_model_state_dict(text_encoder, adapter_name=ADAPTER)),),
    )
    modules = {key.split(".")[0] for key in layers}
    return {m for m in modules if m.startswith("lora_unet_")}, {m for m in modules if m.startswith("lora_te")}


def automatic1111_name(key: str) -> str:
    """convert_diffusers_name_to_compvis's rules for the modules a LoRA here adapts (attention projections)."""
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)", key):
        return f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[2])}_1_{m[3]}"
    if m := re.fullmatch(r"lora_unet_mid_block_attentions_(\d+)_(.+)", key):
        return f"diffusion_model_middle_block_1_{m[2]}"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)", key):
        return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[2])}_1_{m[3]}"
    if m := re.fullmatch(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key):
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    return key


def test_kohya_names_are_the_names_comfyui_and_automatic1111_look_for(tmp_path: Path):
    unet_names, text_names = kohya_modules(tmp_path)
    with torch.device("meta"):
        unet = _make_unet(SIZES["full"])
    # note: every attention projection of SD 1.5: 16 transformer blocks x 2 attentions x 4, and 12 CLIP layers x 4
    assert (len(unet_names), len(text_names)) == (128, 48)

    comfy_unet = {"lora_unet_" + key.removesuffix(".weight").replace(".", "_") for key in unet.state_dict()
                  if key.endswith(".weight")}  # fmt: skip
    comfy_text = {
        f"lora_te_text_model_encoder_layers_{layer}_{part}" for layer in range(12) for part in COMFY_CLIP_PARTS
    }
    assert unet_names - comfy_unet == set() and text_names - comfy_text == set()

    out = tmp_path / "modules.json"
    done = subprocess.run(
        [str(COMPAT_PYTHON), str(Path(__file__).with_name("original_layout.py")), str(out), "--modules"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    original_modules = set(json.loads(out.read_text()))
    unmatched = {name: automatic1111_name(name) for name in unet_names | text_names
                 if automatic1111_name(name) not in original_modules}  # fmt: skip
    assert unmatched == {}
