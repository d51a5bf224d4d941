"""Photo ingest: decode, verify, turn upright, convert to sRGB, and re-encode without metadata.

Decoding is what decides: names and Content-Type headers are never trusted, and only the four
formats below are ever tried (so EPS, SVG, TIFF or GIF never reach a decoder). Sizes are checked
from the header before any pixel is decoded, so a decompression bomb costs nothing. The stored file
is a fresh JPEG: whatever rode along in the upload (EXIF and GPS, comments, an appended archive)
is gone.
"""

import hashlib
import io
import threading
import warnings
from dataclasses import dataclass

import pillow_heif
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from backend.errors import DomainError, InvalidInput, PayloadTooLarge
from backend.photo_checks import PhotoFacts, analyse, jpeg_quality
from backend.settings import get_settings

pillow_heif.register_heif_opener()

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF")
MIN_SIDE = 64
# Training crops at most 1024 px, so larger photos are stored at this side (and JPEGs decoded smaller).
MAX_STORED_SIDE = 2048
# Decoded images are large; a few at a time keeps the API's memory bounded under concurrent uploads.
_decode_slots = threading.BoundedSemaphore(2)
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class IngestedPhoto:
    data: bytes  # a clean JPEG: upright, sRGB, no metadata
    extension: str
    width: int
    height: int
    sha256: str
    facts: PhotoFacts | None = None  # its quality facts and faces, when ingested with analyse=True
    name: str = ""  # the uploaded file's name, as the client gave it (never used as a path)


def ingest_photo(data: bytes, field: str, label: str, analyse_pixels: bool = False, name: str = "") -> IngestedPhoto:
    """Validate one uploaded photo and return it re-encoded; `label` names it in errors. With `analyse_pixels`,
    its quality facts and faces are measured on the decoded pixels (backend/photo_checks.py), once."""
    settings = get_settings()
    if len(data) > settings.max_photo_bytes:
        raise PayloadTooLarge(f"{label} is larger than {settings.max_photo_bytes / 2**20:.1f} MiB", field)
    try:
        with warnings.catch_warnings(), _decode_slots:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                _check_header(image, field, label)
                quality = jpeg_quality(image)  # note: from the header's tables, before the photo is re-encoded
                rgb = _decode(image)
    except DomainError:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(f"{label} is not a JPEG, PNG, WebP or HEIC image", field) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise PayloadTooLarge(f"{label} has more than {settings.max_photo_pixels:,} pixels", field) from None
    except Exception:
        # note: decoders fail on damaged files with many exception types; all mean the same here.
        raise InvalidInput(f"{label} is damaged or truncated", field) from None
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=95, subsampling=0)
    encoded = out.getvalue()
    return IngestedPhoto(
        data=encoded,
        extension=".jpg",
        width=rgb.width,
        height=rgb.height,
        sha256=hashlib.sha256(encoded).hexdigest(),
        facts=analyse(rgb, quality) if analyse_pixels else None,
        name=name,
    )


def _check_header(image: Image.Image, field: str, label: str) -> None:
    """Refuse by the size the header declares, before decoding anything."""
    max_pixels = get_settings().max_photo_pixels
    if image.width * image.height > max_pixels:
        raise PayloadTooLarge(f"{label} has more than {max_pixels:,} pixels", field)
    if min(image.size) < MIN_SIDE:
        raise InvalidInput(f"{label} is too small ({image.width}x{image.height}); use at least {MIN_SIDE} px", field)


def _decode(image: Image.Image) -> Image.Image:
    """The first frame, upright, in sRGB, at most MAX_STORED_SIDE on its longer side."""
    image.seek(0)  # animated images: the first frame
    if image.format == "JPEG":
        # note: JPEG can decode at 1/2, 1/4 or 1/8 scale, which spares memory for huge photos.
        image.draft(image.mode, (MAX_STORED_SIDE, MAX_STORED_SIDE))
    image.load()
    icc = image.info.get("icc_profile")
    upright = ImageOps.exif_transpose(image)
    rgb = _to_srgb(upright, icc)
    rgb.thumbnail((MAX_STORED_SIDE, MAX_STORED_SIDE), Image.Resampling.LANCZOS)
    rgb.info = {}  # note: JPEG's encoder would otherwise carry the comment (and more) over
    return rgb


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Apply an embedded colour profile (Display P3 phones, CMYK), then flatten to RGB."""
    if icc and image.mode in ("RGB", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: the pixels as they are
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any mode (palette, alpha, CMYK, 16-bit) onto white RGB."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        return image.point(lambda value: value / 256).convert("L").convert("RGB")
    return image.convert("RGB")
