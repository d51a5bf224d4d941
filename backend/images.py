"""Photo ingest: decode, verify, turn upright, convert to RGB, and re-encode without metadata."""

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import InvalidInput, PayloadTooLarge
from backend.settings import get_settings

# Decoding is what decides; names and Content-Type headers are never trusted.
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP"}
MIN_SIDE = 64


@dataclass(frozen=True)
class IngestedPhoto:
    data: bytes  # a clean JPEG: upright, RGB, no metadata
    extension: str
    width: int
    height: int
    sha256: str


def ingest_photo(data: bytes, field: str, label: str) -> IngestedPhoto:
    """Validate one uploaded photo and return it re-encoded; `label` names it in errors."""
    settings = get_settings()
    if len(data) > settings.max_photo_bytes:
        raise PayloadTooLarge(f"{label} is larger than {settings.max_photo_bytes // 2**20} MiB", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS)) as image:
                if image.width * image.height > settings.max_photo_pixels:
                    raise PayloadTooLarge(f"{label} has more than {settings.max_photo_pixels:,} pixels", field)
                image.seek(0)  # animated images: the first frame
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = _to_rgb(upright)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(f"{label} is not a JPEG, PNG or WebP image", field) from None
    except (OSError, SyntaxError, ValueError):
        raise InvalidInput(f"{label} is damaged or truncated", field) from None
    if min(rgb.size) < MIN_SIDE:
        raise InvalidInput(f"{label} is too small ({rgb.width}x{rgb.height}); use at least {MIN_SIDE} px", field)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=95, subsampling=0)
    encoded = out.getvalue()
    return IngestedPhoto(
        data=encoded,
        extension=".jpg",
        width=rgb.width,
        height=rgb.height,
        sha256=hashlib.sha256(encoded).hexdigest(),
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any mode (palette, alpha, CMYK, 16-bit) onto white RGB."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        return image.point(lambda value: value / 256).convert("L").convert("RGB")
    return image.convert("RGB")
