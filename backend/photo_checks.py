"""Photo quality checks and crop boxes, computed once at upload and stored on each photo.

A photo's facts (size, sharpness, perceptual hash, faces) come from its pixels at ingest; what they mean
depends on the job's settings (resolution, crop, captions) and on the other photos (duplicates), so
`assess_photos` turns the whole set's facts into each photo's checks, crop box and prompt. The preview
(`POST /api/photos/preview`) and job creation call the same function, and the worker trains on the stored
crop box, so the page never shows a crop the trainer does not use.

Warnings never block alone. A photo is *usable* unless it is smaller than the resolution, a near-duplicate of
an earlier photo, or (with crop=face) shows no face or several faces; blurred photos stay usable (a sharp
photo of a plain wall measures low too). A job with fewer than MIN_USABLE_PHOTOS usable photos is refused.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from backend import faces
from backend.errors import InvalidInput
from backend.settings import get_settings
from formats.buckets import bucket_for
from formats.captions import TOKEN_LIMIT, estimate_tokens, photo_prompt

# Sharpness is measured with the photo's shorter side at this many pixels, so one threshold fits every size.
SHARPNESS_SIDE = 512
# Variance of the Laplacian below this is "blurred". Measured on scikit-image's sample photos at SHARPNESS_SIDE:
# sharp ones 399 (chelsea) to 4826 (page), their Gaussian-blurred (radius 2) copies 3 to 31, radius 1: 24 to 256.
BLUR_THRESHOLD = 100.0
# dHash bits two photos may differ in and still be near-duplicates. A resized, re-compressed (JPEG 60),
# brightened or blurred copy of astronaut() differs in 0 bits, a 10% crop of it in 13, and any two different
# sample photos in 21 or more.
DUPLICATE_BITS = 10
CROP_MODES = ("center", "random", "face", "bucket")
# An uploaded JPEG whose encoder quality (estimated from its quantization tables) is below this is "heavily
# compressed": at 50 and under, libjpeg's 8x8 blocks and ringing show around edges, and Dreambooth learns them too.
LOW_JPEG_QUALITY = 50
# libjpeg's (IJG) luminance quantization table at quality 50: the one other qualities scale (jcparam.c).
IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


@dataclass(frozen=True)
class PhotoFacts:
    """What the pixels of one stored photo say, whatever the job's settings."""

    width: int
    height: int
    dhash: int  # 64-bit difference hash (perceptual)
    sharpness: float  # variance of the Laplacian at SHARPNESS_SIDE
    faces: tuple[faces.Box, ...]  # frontal faces, largest first
    jpeg_quality: int | None = None  # the upload's JPEG quality, estimated (jpeg_quality); None: not a JPEG


@dataclass(frozen=True)
class PhotoWarning:
    code: str  # too_small | blurred | low_jpeg_quality | duplicate | no_face | several_faces | prompt_too_long
    message: str


@dataclass
class PhotoCheck:
    """One photo as the job will train on it: its crop, caption and prompt, and what is wrong with it."""

    crop_box: faces.Box | None  # left, top, right, bottom in the stored photo; None: random crops, or its bucket
    caption: str | None
    prompt: str  # what the text encoder is given for this photo
    usable: bool = True
    warnings: list[PhotoWarning] = field(default_factory=list)
    facts: PhotoFacts | None = None
    bucket: tuple[int, int] | None = None  # (width, height) it trains at with crop "bucket" (formats/buckets.py)

    def as_dict(self) -> dict:
        """The stored and served form (Photo.checks)."""
        facts = self.facts
        return {
            "usable": self.usable,
            "warnings": [{"code": w.code, "message": w.message} for w in self.warnings],
            "faces": [list(box) for box in facts.faces] if facts else [],
            "sharpness": round(facts.sharpness, 1) if facts else None,
            "dhash": f"{facts.dhash:016x}" if facts else None,
            "jpeg_quality": facts.jpeg_quality if facts else None,
            "bucket": list(self.bucket) if self.bucket else None,
        }


def analyse(image: Image.Image, jpeg_quality: int | None = None) -> PhotoFacts:
    """The facts of an upright RGB photo (as stored: the crop box is in these pixels); `jpeg_quality` is the
    upload's, which the stored photo's pixels no longer tell."""
    rgb = np.asarray(image.convert("RGB"))
    gray = image.convert("L")
    scale = SHARPNESS_SIDE / min(gray.size)
    if scale < 1:
        gray = gray.resize((round(gray.width * scale), round(gray.height * scale)), Image.Resampling.BILINEAR)
    sharpness = float(cv2.Laplacian(np.asarray(gray), cv2.CV_64F).var())
    return PhotoFacts(image.width, image.height, dhash(gray), sharpness, tuple(faces.detect_faces(rgb)), jpeg_quality)


def jpeg_quality(image: Image.Image) -> int | None:
    """The quality (1-100) a JPEG was saved at, from its luminance quantization table as the header gives it (no
    pixel decoded): the table's scale against libjpeg's quality-50 table, inverted as libjpeg scales it. Exact
    for libjpeg-made files (Pillow, OpenCV, most software); for cameras' own tables, the libjpeg quality that
    quantizes as coarsely. None for other formats.

    note: a sum, not per-entry ratios, so the tables' order (zigzag or natural, by Pillow version) does not
    matter; below about 15 libjpeg clamps entries at 255 and the estimate reads high (still under the threshold).
    """
    tables = getattr(image, "quantization", None)
    if image.format != "JPEG" or not tables or len(tables.get(0, ())) != len(IJG_LUMINANCE):
        return None
    scale = 100 * sum(tables[0]) / sum(IJG_LUMINANCE)  # libjpeg: 5000 / quality below 50, 200 - 2 quality above
    quality = 5000 / scale if scale > 100 else (200 - scale) / 2
    return round(min(100.0, max(1.0, quality)))


def dhash(image: Image.Image) -> int:
    """The difference hash: whether each of 8 x 8 cells is brighter than its left neighbour, as 64 bits."""
    cells = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    return int.from_bytes(np.packbits(cells[:, 1:] > cells[:, :-1]).tobytes(), "big")


def crop_mode(settings: dict) -> str:
    """The crop a job's settings ask for: crop=auto follows center_crop (the setting it extends)."""
    mode = settings.get("crop", "auto")
    if mode == "auto":
        return "center" if settings.get("center_crop") else "random"
    return mode


def assess_photos(
    facts: Sequence[PhotoFacts], names: Sequence[str], settings: dict, captions: Sequence[str | None]
) -> list[PhotoCheck]:
    """Each photo's crop box, prompt and checks under a job's (validated) settings; `names` label photos in
    the warnings."""
    resolution, mode = settings["resolution"], crop_mode(settings)
    checks = []
    for index, (photo, caption) in enumerate(zip(facts, captions, strict=True)):
        prompt = photo_prompt(settings["instance_prompt"], caption, settings.get("caption_mode", "instance_only"))
        check = PhotoCheck(crop_box=None, caption=caption, prompt=prompt, facts=photo)
        check.crop_box = _crop_box(photo, resolution, mode, check)
        if mode == "bucket":
            # note: the trainer computes the same bucket from the stored photo's size (worker/dreambooth/data.py)
            check.bucket = bucket_for(photo.width, photo.height, resolution)
        if check.bucket and (photo.width < check.bucket[0] or photo.height < check.bucket[1]):
            bucket = f"{check.bucket[0]}x{check.bucket[1]}"
            _warn(check, "too_small", f"{photo.width}x{photo.height} is smaller than its {bucket} aspect-ratio bucket")
        elif not check.bucket and min(photo.width, photo.height) < resolution:
            _warn(check, "too_small", f"{photo.width}x{photo.height} is smaller than the {resolution} px resolution")
        if photo.sharpness < BLUR_THRESHOLD:
            # note: warned, not refused: a sharp photo of a plain surface measures low too
            _note(check, "blurred", f"looks blurred (sharpness {photo.sharpness:.0f}, under {BLUR_THRESHOLD:.0f})")
        if photo.jpeg_quality is not None and photo.jpeg_quality < LOW_JPEG_QUALITY:
            quality = f"quality about {photo.jpeg_quality}, under {LOW_JPEG_QUALITY}"
            _note(check, "low_jpeg_quality", f"is a heavily compressed JPEG ({quality}): its artefacts may be learned")
        if (earlier := _duplicated(facts, index)) is not None:
            _warn(check, "duplicate", f"is a near-duplicate of {names[earlier]}")
        if (tokens := estimate_tokens(prompt)) > TOKEN_LIMIT:
            _note(check, "prompt_too_long", f"its prompt is about {tokens} tokens; the text encoder reads the first "
                                            f"{TOKEN_LIMIT} and drops the rest")  # fmt: skip
        checks.append(check)
    return checks


def _crop_box(photo: PhotoFacts, resolution: int, mode: str, check: PhotoCheck) -> faces.Box | None:
    """The square the trainer crops (None: random crops, or its aspect-ratio bucket), with a warning when face
    cropping cannot do its job."""
    if mode in ("random", "bucket"):
        return None
    if mode == "face":
        if not photo.faces:
            _warn(check, "no_face", "no face found; it will be centre-cropped")
        else:
            if len(photo.faces) > 1:
                _warn(check, "several_faces", f"{len(photo.faces)} faces found; the crop is around the largest")
            return faces.face_crop(photo.faces[0], photo.width, photo.height, resolution)
    return faces.center_crop(photo.width, photo.height)


def _warn(check: PhotoCheck, code: str, message: str) -> None:
    """A warning that makes the photo unusable."""
    check.usable = False
    _note(check, code, message)


def _note(check: PhotoCheck, code: str, message: str) -> None:
    """A warning that only informs."""
    check.warnings.append(PhotoWarning(code, message))


def _duplicated(facts: Sequence[PhotoFacts], index: int) -> int | None:
    """The first earlier photo this one is a near-duplicate of, if any."""
    for earlier in range(index):
        if (facts[earlier].dhash ^ facts[index].dhash).bit_count() <= DUPLICATE_BITS:
            return earlier
    return None


def refuse_too_few_usable(checks: Sequence[PhotoCheck], names: Sequence[str]) -> None:
    """A 422 naming every unusable photo and why, when fewer than MIN_USABLE_PHOTOS photos are usable."""
    needed = get_settings().min_usable_photos
    usable = sum(check.usable for check in checks)
    if usable >= needed:
        return
    reasons = "; ".join(
        f"{names[index]}: {', '.join(w.message for w in check.warnings if w.code in UNUSABLE)}"
        for index, check in enumerate(checks)
        if not check.usable
    )
    detail = f" ({reasons})" if reasons else ""
    raise InvalidInput(
        f"photos: {usable} of {len(checks)} photos are usable, and a job needs {needed}{detail}", "photos"
    )


# The warnings that make a photo unusable (the rest only inform).
UNUSABLE = ("too_small", "duplicate", "no_face", "several_faces")
