"""Single files in SD 1.5's original layout, checked against the original code at full size: every name and
shape of the public checkpoint's UNet, VAE and text encoder, and nothing else.

A round trip through diffusers' own converters is not enough: they tolerate gaps that AUTOMATIC1111's
non-strict loading would turn into random weights. tests/compat/original_layout.py reads the names and
shapes off ldm's own modules (in .venv-compat); here the worker's export names SD 1.5's architecture
(builtin:full's configs) on the meta device, as the files in a trained pipeline folder hold them.
"""

import json
import subprocess
from pathlib import Path

import torch

from formats.hub_layout import hub_name
from worker.dreambooth.export import original_state_dict
from worker.dreambooth.tiny import SIZES, _make_text_encoder, _make_unet, _make_vae, _write_vocab_files

ROOT = Path(__file__).resolve().parents[2]
COMPAT_PYTHON = ROOT / ".venv-compat" / "bin" / "python"


def original_names_and_shapes(out: Path) -> dict[str, list[int]]:
    done = subprocess.run(
        [str(COMPAT_PYTHON), str(Path(__file__).with_name("original_layout.py")), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def exported_names_and_shapes(tmp_path: Path) -> dict[str, list[int]]:
    from transformers import CLIPTokenizer

    _write_vocab_files(tmp_path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    widths = SIZES["full"]
    with torch.device("meta"):
        unet, vae, text_encoder = _make_unet(widths), _make_vae(widths), _make_text_encoder(widths, tokenizer)
    # note: as a saved pipeline folder names them (formats/hub_layout.py), whatever transformers is installed
    text = {hub_name("CLIPTextModel", key): value for key, value in text_encoder.state_dict().items()}
    tensors = original_state_dict(unet.state_dict(), dict(unet.config), vae.state_dict(), dict(vae.config), text)
    return {name: list(tensor.shape) for name, tensor in tensors.items()}


def test_sd15_single_file_names_and_shapes_equal_the_original_checkpoints(tmp_path: Path):
    original = original_names_and_shapes(tmp_path / "original.json")
    exported = exported_names_and_shapes(tmp_path)
    assert len(original) == 686 + 248 + 197  # note: UNet, VAE and text encoder, as the public SD 1.5 files
    assert sorted(set(original) - set(exported)) == []
    assert sorted(set(exported) - set(original)) == []
    assert {name: shape for name, shape in exported.items() if original[name] != shape} == {}
