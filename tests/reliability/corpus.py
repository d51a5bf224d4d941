"""Made-up uploads, good and bad, generated in the test: every kind of file a server meets in the wild."""

import io
import struct
import zipfile
import zlib

from PIL import ExifTags, Image, ImageDraw


def save(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def two_tone(size=(120, 80), mode="RGB") -> Image.Image:
    """Left half red, right half blue: shows which way up a stored photo is."""
    image = Image.new("RGB", size, "blue")
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1]), fill="red")
    return image.convert(mode) if mode != "RGB" else image


def jpeg_rotated_with_gps() -> bytes:
    """A 120x80 JPEG that EXIF says to turn a quarter clockwise, with a GPS position and a comment."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "PhoneCo"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    return save(two_tone(), "JPEG", exif=exif, comment=b"secret comment")


def png_with_declared_size(width: int, height: int) -> bytes:
    """A decompression bomb's header: a tiny PNG whose IHDR claims `width` x `height` pixels."""
    data = bytearray(save(Image.new("L", (1, 1)), "PNG"))
    ihdr = data[12:29]  # chunk type + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def png_zlib_bomb(side: int = 8000) -> bytes:
    """A real bomb: a few KiB of zeros that inflate to side x side pixels."""
    raw = zlib.compress(b"\0" * (side + 1) * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims `width` x `height`."""
    data = bytearray(save(Image.new("RGB", (64, 64)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_zip_appended() -> bytes:
    """A polyglot: a valid JPEG that is also a valid ZIP archive."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("payload.html", "<script>alert(1)</script>")
    return save(two_tone(), "JPEG") + archive.getvalue()


def zip_with_jpeg_appended() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("a.txt", "hello")
    return archive.getvalue() + save(two_tone(), "JPEG")


def animated_webp() -> bytes:
    """Two frames: red first, then green."""
    frames = [Image.new("RGB", (96, 96), color) for color in ("red", "green")]
    return save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)


def heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return save(two_tone(), "HEIF", quality=90)


def png_16bit_gray() -> bytes:
    image = Image.new("I;16", (96, 96))
    image.paste(40000, (0, 0, 96, 96))
    return save(image, "PNG")


def large_photo(size=(4000, 3000)) -> bytes:
    """A 12-megapixel photo, as phones take them."""
    gradient = Image.radial_gradient("L").resize(size)
    return save(Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_180), gradient)), "JPEG")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto 100 100 lineto stroke\n%%EOF\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect width="100" height="100"/></svg>'

# name -> (file bytes, expected status, expected words in the error message, or the stored size)
ACCEPTED = {
    "jpeg rotated, GPS-tagged": (jpeg_rotated_with_gps, (80, 120)),
    "png with alpha": (lambda: save(two_tone(mode="RGBA"), "PNG"), (120, 80)),
    "png palette": (lambda: save(two_tone().convert("P"), "PNG"), (120, 80)),
    "png 16-bit": (png_16bit_gray, (96, 96)),
    "jpeg cmyk": (lambda: save(two_tone(mode="CMYK"), "JPEG"), (120, 80)),
    "webp animated": (animated_webp, (96, 96)),
    "heic": (heic, (120, 80)),
    "jpeg with a zip appended": (jpeg_with_zip_appended, (120, 80)),
    "smallest allowed": (lambda: save(Image.new("RGB", (64, 64), "red"), "PNG"), (64, 64)),
    "12 megapixels": (large_photo, (2048, 1536)),
}

REFUSED = {
    "png bomb header": (lambda: png_with_declared_size(100_000, 100_000), 413, "pixels"),
    "png just over the pixel limit": (lambda: png_with_declared_size(10_000, 5_001), 413, "pixels"),
    "png zlib bomb": (png_zlib_bomb, 413, "pixels"),
    "jpeg bomb header": (lambda: jpeg_with_declared_size(65_000, 65_000), 413, "pixels"),
    "truncated jpeg": (lambda: save(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")[:2000], 422, "damaged"),
    "truncated png": (lambda: save(Image.effect_noise((200, 200), 50), "PNG")[:3000], 422, "damaged"),
    "gif": (lambda: save(two_tone(), "GIF"), 422, "not a JPEG, PNG, WebP or HEIC"),
    "tiff": (lambda: save(two_tone(), "TIFF"), 422, "not a JPEG"),
    "bmp": (lambda: save(two_tone(), "BMP"), 422, "not a JPEG"),
    "eps": (lambda: EPS, 422, "not a JPEG"),
    "svg": (lambda: SVG, 422, "not a JPEG"),
    "zip with a jpeg appended": (zip_with_jpeg_appended, 422, "not a JPEG"),
    "empty": (lambda: b"", 422, "not a JPEG"),
    "too small": (lambda: save(Image.new("RGB", (63, 200)), "PNG"), 422, "too small"),
}
