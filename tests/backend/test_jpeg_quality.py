"""The low_jpeg_quality check: the upload's JPEG quality, read from its quantization tables before it is
re-encoded, on a real photo that ships inside scikit-image."""

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

from backend.photo_checks import LOW_JPEG_QUALITY, jpeg_quality

SETTINGS = {"instance_prompt": "a photo of rufus person", "resolution": 256}


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(samples.astronaut())


def saved(image: Image.Image, image_format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("quality", [20, 49, 50, 75, 95])
def test_the_quality_libjpeg_saved_at_is_read_back_from_the_header(astronaut, quality):
    assert jpeg_quality(Image.open(io.BytesIO(saved(astronaut, quality=quality)))) == quality
    _ok, opencv = cv2.imencode(".jpg", np.asarray(astronaut)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert jpeg_quality(Image.open(io.BytesIO(opencv.tobytes()))) == quality


def test_other_formats_have_no_jpeg_quality(astronaut):
    assert jpeg_quality(Image.open(io.BytesIO(saved(astronaut, "PNG")))) is None
    assert jpeg_quality(Image.open(io.BytesIO(saved(astronaut, "WEBP", quality=10)))) is None


def test_a_heavily_compressed_upload_is_warned_about_and_stays_usable(client, auth_headers, astronaut):
    files = [
        ("photos", ("low.jpg", saved(astronaut, quality=25), "image/jpeg")),
        ("photos", ("fine.jpg", saved(astronaut.rotate(90), quality=LOW_JPEG_QUALITY), "image/jpeg")),
        ("photos", ("lossless.png", saved(astronaut.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "PNG"), "image/png")),
    ]
    response = client.post(
        "/api/photos/preview", data={"settings": json.dumps(SETTINGS)}, files=files, headers=auth_headers
    )
    assert response.status_code == 200, response.text
    checks = {photo["name"]: photo["checks"] for photo in response.json()["photos"]}
    assert [checks[name]["jpeg_quality"] for name in ("low.jpg", "fine.jpg", "lossless.png")] == [25, 50, None]
    assert [w["code"] for w in checks["low.jpg"]["warnings"]] == ["low_jpeg_quality"]
    assert "quality about 25" in checks["low.jpg"]["warnings"][0]["message"] and checks["low.jpg"]["usable"]
    assert checks["fine.jpg"]["warnings"] == [] and checks["lossless.png"]["warnings"] == []
