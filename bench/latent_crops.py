"""Why random crops are encoded crop by crop: how far a window of a whole photo's latent map is from the VAE's
encoding of the same crop.

    python -m bench.latent_crops                        # the builtin small model's VAE, 128 px crops
    python -m bench.latent_crops --size full --resolution 512 --device cuda

A cheaper latent cache for random crops would encode each resized photo once and cut each step's crop out of its
latent map at whole latent cells. But the VAE's convolutions reach beyond the crop and its GroupNorm layers and
mid-block attention see the whole photo, so a window is not the crop's encoding. For photos of a few widths and
crops at every whole-cell offset this reports the latent means' difference relative to their spread (RMS of the
difference over RMS of the direct encoding's deviation from its mean), over the whole window, over its border
ring (the outermost `--ring` cells) and over its interior. The training loop does not cut windows: it encodes
each of a photo's few crop positions directly, once (worker/dreambooth/data.py LatentSource), so its latents
are the crops' own.

The builtin models have random weights (no network here), so these figures describe the architecture at random
initialisation; a trained VAE's own figure needs its weights (`--vae` takes any diffusers VAE folder).
"""

import argparse
import json
from pathlib import Path

from bench.common import DEFAULT_WORK_DIR, builtin_model, report_header


def measure(args) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image, ImageDraw

    from worker.dreambooth.data import pixel_tensor

    torch.manual_seed(0)
    folder = args.vae or builtin_model(args.work_dir, args.size) / "vae"
    vae = AutoencoderKL.from_pretrained(folder).to(args.device).eval()
    cell = 2 ** (len(vae.config.block_out_channels) - 1)
    side = args.resolution // cell
    rng = np.random.default_rng(0)
    totals = {"window": [], "border": [], "interior": []}
    for aspect in args.aspects:
        width = round(args.resolution * aspect) // cell * cell
        # note: a photo-like scene: smooth shapes over a fine texture, so both low and high frequencies matter
        image = Image.fromarray(rng.integers(96, 160, (args.resolution, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, width - 16), rng.integers(0, args.resolution - 16)
            draw.ellipse((x, y, x + rng.integers(16, args.resolution // 2), y + rng.integers(16, args.resolution // 2)),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))  # fmt: skip
        with torch.no_grad():
            whole = vae.encode(pixel_tensor(image)[None].to(args.device)).latent_dist.mean[0]
            for x in range(0, width // cell - side + 1):
                crop = image.crop((x * cell, 0, x * cell + args.resolution, args.resolution))
                direct = vae.encode(pixel_tensor(crop)[None].to(args.device)).latent_dist.mean[0]
                window = whole[:, :, x : x + side]
                spread = (direct - direct.mean()).pow(2).mean().sqrt()
                difference = (window - direct).pow(2)
                ring = torch.zeros(side, side, dtype=torch.bool, device=difference.device)
                ring[: args.ring], ring[-args.ring :], ring[:, : args.ring], ring[:, -args.ring :] = (
                    True,
                    True,
                    True,
                    True,
                )
                totals["window"].append(float(difference.mean().sqrt() / spread))
                totals["border"].append(float(difference[:, ring].mean().sqrt() / spread))
                totals["interior"].append(float(difference[:, ~ring].mean().sqrt() / spread))
    return {
        "crops": len(totals["window"]),
        **{f"{name}_median": float(np.median(values)) for name, values in totals.items()},
        **{f"{name}_max": float(np.max(values)) for name, values in totals.items()},
    }


def report(args, result: dict) -> str:
    lines = [
        *report_header("bench.latent_crops", args.device, None),
        f"- VAE: {args.vae or f'builtin:{args.size} (random weights)'}; {args.resolution} px crops at every "
        f"whole-cell offset of photos {', '.join(f'{a:g}' for a in args.aspects)} times as wide as high "
        f"({result['crops']} crops); border: the outermost {args.ring} latent cells",
        "",
        "| region | median relative RMS difference | largest |",
        "| --- | ---: | ---: |",
    ]
    for name in ("window", "border", "interior"):
        lines.append(f"| {name} | {result[f'{name}_median']:.3f} | {result[f'{name}_max']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small", help="the builtin model's VAE")
    parser.add_argument("--vae", type=Path, help="a diffusers VAE folder instead (e.g. a trained model's vae/)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--aspects", type=float, nargs="+", default=[1.25, 1.5])
    parser.add_argument("--ring", type=int, default=2, help="latent cells that count as the border")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args)
    print(report(args, result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
