"""What a training step is made of: photos as latents, prompts as embeddings, batches of indices.

A photo trains either as a square (resolution x resolution: centre, random or a stored crop box) or, with
aspect-ratio buckets (crop "bucket"), at the bucket nearest its own shape (formats/buckets.py: a width and height
of multiples of 64 whose area is at most resolution^2, kohya's scheme), resized to cover it and cut only by the
bucket's rounding. A loaded photo carries its training size in info[TARGET_SIZE], so the crop, the cached latents
and SDXL's time ids all follow it.

PIL and torch only (no torchvision).
"""

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from formats.buckets import bucket_for

CROP_POSITIONS = 8  # random crop: at most this many crops per photo, spread along its longer side


ORIGINAL_SIZE = "original_size"  # a loaded photo's info key: its (height, width) before resizing
# A loaded photo's info key: the (top, left) its crop box starts at, in the photo scaled as the crop was (SDXL's
# crop conditioning adds it to the crop origin); absent without a crop box.
CROP_OFFSET = "crop_offset"
# A loaded photo's info key: the (height, width) it trains at (its bucket); absent: resolution x resolution.
TARGET_SIZE = "target_size"
# A loaded photo's info key: the subject's (face's) box, (left, top, right, bottom) in the loaded photo's pixels
# (floats), which masked loss weights towards; absent: no subject box.
SUBJECT_BOX = "subject_box"

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels (PIL's box)


def target_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """The (height, width) a loaded photo trains at: its bucket's, else the square."""
    return image.info.get(TARGET_SIZE, (resolution, resolution))


def load_photo(
    path: Path, resolution: int, crop_box: Box | None = None, bucketed: bool = False, subject_box: Box | None = None
) -> Image.Image:
    """Open a photo upright in RGB with its shortest side resized to `resolution` (info[ORIGINAL_SIZE]: the size
    it had, which SDXL is conditioned on). With a `crop_box` (a square the API chose at upload, in the stored
    photo's pixels: a face crop, say), that square alone, resized to resolution x resolution. `bucketed` (and no
    crop box): resized to cover its aspect-ratio bucket instead (info[TARGET_SIZE]), so only the bucket's
    rounding is cut. A `subject_box` (in the stored photo's pixels) is kept in info[SUBJECT_BOX], in the loaded
    photo's."""
    with Image.open(path) as file:
        image = ImageOps.exif_transpose(file).convert("RGB")
    shift = (0, 0)
    if crop_box is not None:
        left, top, right, _bottom = crop_box
        scale, shift = resolution / (right - left), (left, top)
        resized = image.crop(crop_box).resize((resolution, resolution), Image.Resampling.LANCZOS)
        resized.info[CROP_OFFSET] = (round(top * scale), round(left * scale))
    elif bucketed:
        width, height = bucket_for(image.width, image.height, resolution)
        scale = max(width / image.width, height / image.height)
        # note: cover the bucket; the side that overshoots does so by the bucket's rounding alone
        size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        resized = image.resize(size, Image.Resampling.LANCZOS)
        resized.info[TARGET_SIZE] = (height, width)
    else:
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        resized = image.resize(size, Image.Resampling.LANCZOS)
    resized.info[ORIGINAL_SIZE] = (image.height, image.width)
    if subject_box is not None:
        left, top, right, bottom = subject_box
        resized.info[SUBJECT_BOX] = tuple(
            (value - origin) * scale for value, origin in zip((left, top, right, bottom), shift * 2, strict=True)
        )
    return resized


def crop_origin(
    image: Image.Image, resolution: int, center_crop: bool, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """The (top, left) corner of a crop of a resized photo to its training size: centred, or drawn from
    `generator`."""
    height, width = target_size(image, resolution)
    spare_x, spare_y = image.width - width, image.height - height
    if center_crop:
        return spare_y // 2, spare_x // 2
    left = int(torch.randint(spare_x + 1, (), generator=generator))
    top = int(torch.randint(spare_y + 1, (), generator=generator))
    return top, left


def time_ids(image: Image.Image, origin: tuple[int, int], resolution: int) -> list[int]:
    """SDXL's size and crop conditioning of a crop: original height and width, crop top and left, target height
    and width (the bucket's, or the square's)."""
    height, width = image.info.get(ORIGINAL_SIZE, (image.height, image.width))
    top, left = image.info.get(CROP_OFFSET, (0, 0))
    return [height, width, origin[0] + top, origin[1] + left, *target_size(image, resolution)]


def to_tensor(
    image: Image.Image,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    generator: torch.Generator | None = None,
    origin: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Crop a resized photo to its training size (at `origin`, else center or random), maybe flip it, as CHW
    floats in [-1, 1]."""
    top, left = origin or crop_origin(image, resolution, center_crop, generator)
    height, width = target_size(image, resolution)
    pixels = pixel_tensor(image.crop((left, top, left + width, top + height)))
    if random_flip and torch.rand((), generator=generator) < 0.5:
        pixels = pixels.flip(-1)
    return pixels


def pixel_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as CHW floats in [-1, 1], the VAE's input."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1.0


def batches(count: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield index batches forever, reshuffling every epoch (batches wrap across epochs)."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(count, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def bucket_batches(
    buckets: Sequence[Sequence[int]], batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Yield index batches forever, each from one bucket (a list of photo indices): an epoch is each bucket's
    ceil(photos / batch_size) batches, in a shuffled order. Every batch is full: a bucket's batches wrap across its
    own epochs (as `batches`), so a bucket with fewer photos than the batch repeats them."""
    # note: full batches keep the loss's scale and the step's shape the same in every bucket; the repeated photos
    # differ in their latent draw, noise and timestep, as kohya's repeats do
    buckets = [torch.tensor(list(bucket), dtype=torch.long) for bucket in buckets if len(bucket)]
    streams = [batches(len(bucket), batch_size, generator) for bucket in buckets]
    slots = torch.cat([torch.full((math.ceil(len(b) / batch_size),), k) for k, b in enumerate(buckets)])
    while True:
        for k in slots[torch.randperm(len(slots), generator=generator)].tolist():
            yield buckets[k][next(streams[k])]


class LatentSource:
    """Scaled VAE latents of a photo set, drawn afresh from each photo's latent distribution, with each crop's
    time ids (see `time_ids`).

    Every crop a run can draw is encoded once, up front, exactly as the VAE encodes that crop (mirrored too
    when random_flip), so no step runs the VAE and it leaves the device after. A center crop is one crop per
    photo; a random crop is one of up to CROP_POSITIONS crops spread evenly along the photo's longer side, edges
    included (diffusers' script draws any pixel offset, and encodes every crop at every step). The VAE takes
    `batch` crops at a time, a training step's worth, so this needs no more memory than encoding every step would.
    Photos in aspect-ratio buckets are cached per bucket (each its own latent size); a call takes photos of one.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        photos: Sequence[Image.Image],
        resolution: int,
        center_crop: bool,
        random_flip: bool,
        batch: int = 1,
    ):
        self.photos, self.resolution, self.random_flip = list(photos), resolution, random_flip
        self.scale = vae.config.scaling_factor
        flips = (False, True) if random_flip else (False,)
        most = 1 if center_crop else CROP_POSITIONS
        self.sizes = [target_size(photo, resolution) for photo in self.photos]
        self.origins = [crop_origins(photo, resolution, most) for photo in self.photos]
        crops = [(i, origin, flip) for i, origins in enumerate(self.origins) for origin in origins for flip in flips]
        self.rows: dict[tuple, tuple[tuple[int, int], int]] = {}  # crop -> (its size, its row in that size's cache)
        self.cached: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # size -> (means, spreads)
        for size in dict.fromkeys(self.sizes):
            # note: the VAE takes crops of one size at a time, so each bucket's latents stack
            same = [crop for crop in crops if self.sizes[crop[0]] == size]
            self.rows.update({crop: (size, row) for row, crop in enumerate(same)})
            means, stds = [], []
            for start in range(0, len(same), batch):
                chunk = same[start : start + batch]
                crop = [to_tensor(self.photos[i], resolution, True, False, origin=o) for i, o, _ in chunk]
                pixels = torch.stack([p.flip(-1) if f else p for p, (_, _, f) in zip(crop, chunk, strict=True)])
                mean, std = _encode(vae, pixels)
                means.append(mean)
                stds.append(std)
            self.cached[size] = (torch.cat(means), torch.cat(stds))
        self.drawn: list[tuple[int, tuple[int, int], bool]] = []  # the last call's crops: (photo, origin, flip)

    def __call__(
        self, indices: torch.Tensor, data_gen: torch.Generator, noise_gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, time ids) of the photos at `indices` (all of one size): crops and flips from data_gen, the
        latent draw from noise_gen."""
        rows, ids, self.drawn = [], [], []
        for i in indices.tolist():
            origins = self.origins[i]
            origin = (
                origins[int(torch.randint(len(origins), (), generator=data_gen))] if len(origins) > 1 else origins[0]
            )
            flip = self.random_flip and bool(torch.rand((), generator=data_gen) < 0.5)
            rows.append(self.rows[i, origin, flip])
            ids.append(time_ids(self.photos[i], origin, self.resolution))
            self.drawn.append((i, origin, flip))
        sizes = {size for size, _ in rows}
        if len(sizes) != 1:
            raise ValueError(f"a batch mixes training sizes {sorted(sizes)}: batches must come from one bucket")
        means, stds = self.cached[sizes.pop()]
        at = torch.tensor([row for _, row in rows], device=means.device)
        mean, std = means[at], stds[at]
        noise = torch.randn(mean.shape, generator=noise_gen, device=mean.device, dtype=mean.dtype)
        return (mean + std * noise) * self.scale, torch.tensor(ids)

    def buckets(self) -> list[list[int]]:
        """The photo indices of each training size, in order of first appearance."""
        return [[i for i, size in enumerate(self.sizes) if size == wanted] for wanted in dict.fromkeys(self.sizes)]

    def subject_weights(self, latent_size: tuple[int, int], background: float) -> torch.Tensor:
        """The loss weights of the last call's crops at `latent_size`, (batch, 1, height, width): 1 over each photo's
        subject box (as cropped and flipped), `background` elsewhere, averaged over each latent cell's pixels; a
        photo without a subject box weighs 1 everywhere."""
        maps = []
        for i, (top, left), flip in self.drawn:
            height, width = self.sizes[i]
            box = self.photos[i].info.get(SUBJECT_BOX)
            pixels = torch.full((height, width), background if box else 1.0)
            if box:
                x0, y0, x1, y1 = (round(v) for v in (box[0] - left, box[1] - top, box[2] - left, box[3] - top))
                x0, x1 = (width - x1, width - x0) if flip else (x0, x1)
                pixels[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 1.0
            maps.append(pixels)
        height, width = self.sizes[self.drawn[0][0]]
        # note: a latent cell's weight is the share of its pixels in the box (a box off the 8 px grid counts in part)
        factor = (height // latent_size[0], width // latent_size[1])
        return torch.nn.functional.avg_pool2d(torch.stack(maps)[:, None], factor)


def crop_origins(image: Image.Image, resolution: int, most: int) -> list[tuple[int, int]]:
    """(top, left) corners of up to `most` crops to the training size spread evenly over a resized photo, both
    edges included; one: the centre."""
    height, width = target_size(image, resolution)
    spare_x, spare_y = image.width - width, image.height - height
    count = min(most, max(spare_x, spare_y) + 1)
    if count == 1:
        return [crop_origin(image, resolution, center_crop=True)]
    spots = [round(k * max(spare_x, spare_y) / (count - 1)) for k in range(count)]
    return [(0, spot) if spare_x > spare_y else (spot, 0) for spot in spots]


@torch.no_grad()
def _encode(vae: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The means and spreads of the latent distributions of a batch of VAE inputs, in fp32."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def batch_order(order: Iterator, micro_steps: int, start_step: int) -> Iterator:
    """A stream of batches (`batches`, `bucket_batches`); on resume, replayed up to where the saved run stopped."""
    for _ in range(start_step * micro_steps):
        next(order)
    return order


class PromptEmbeddings:
    """The conditioning of each instance photo's prompt (and the class prompt) expanded to a batch.

    Photos share few prompts (one, without captions), so the encoders run on the distinct prompts only: all of
    them once up front when frozen, the batch's own once per micro-step (with gradients) when trained.
    """

    def __init__(
        self, family, tokenizers: tuple, text_encoders: tuple, photo_prompts: Sequence[str], class_prompt: str | None,
        trained: bool,
    ):  # fmt: skip
        self.family, self.tokenizers = family, tokenizers
        self.prompts = list(dict.fromkeys([*photo_prompts, *([class_prompt] if class_prompt else [])]))
        self.photo_rows = [self.prompts.index(prompt) for prompt in photo_prompts]
        self.class_row = self.prompts.index(class_prompt) if class_prompt else None
        self.text_encoders = text_encoders if trained else None
        if not trained:
            with torch.no_grad():
                self.cached = family.encode(tokenizers, text_encoders, self.prompts)

    def __call__(self, photos: torch.Tensor, classes: int):
        """The batch's Conditioning: a row of each of the instance `photos`' prompt (indices into the photo set),
        then `classes` rows of the class prompt."""
        rows = [self.photo_rows[i] for i in photos.tolist()] + [self.class_row] * classes
        if self.text_encoders is None:
            return self.cached.rows(torch.tensor(rows, device=self.cached.hidden.device))
        # note: a trained encoder runs on the batch's own distinct prompts only, not on every photo's caption
        needed = list(dict.fromkeys(rows))
        conditioning = self.family.encode(self.tokenizers, self.text_encoders, [self.prompts[i] for i in needed])
        return conditioning.rows(torch.tensor([needed.index(row) for row in rows], device=conditioning.hidden.device))


def overlong_prompts(tokenizers: tuple, prompts: Sequence[str]) -> list[tuple[str, int]]:
    """Each prompt longer than the tokenizer's limit (start and end tokens included), with its length in tokens:
    the encoders read only the first model_max_length of them."""
    tokenizer = tokenizers[0]  # note: a family's tokenizers share one vocabulary and limit
    lengths = [(prompt, len(tokenizer(prompt).input_ids)) for prompt in prompts]
    return [(prompt, length) for prompt, length in lengths if length > tokenizer.model_max_length]
