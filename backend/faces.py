"""Faces in a photo, and the square crop around one that face-aware training uses.

The detector is OpenCV's Haar cascade `haarcascade_frontalface_alt2.xml`, which ships inside the
opencv-python-headless wheel (`cv2.data.haarcascades`): nothing is downloaded at run time, and no
torch is needed, so the API computes crop boxes itself and the page's preview is the trainer's crop.
"""

import threading
from functools import lru_cache

import cv2
import numpy as np

# Detection runs on a copy whose longer side is at most this: enough for faces a tenth of the photo wide.
DETECT_SIDE = 640
# A face narrower than this share of the photo's shorter side is not looked for (background people, noise).
MIN_FACE_SHARE = 0.08
# The crop is this many face widths wide: the face with room for hair, chin and shoulders (about 40% of the side).
CROP_FACE_WIDTHS = 2.5
CASCADE = "haarcascade_frontalface_alt2.xml"

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels (PIL's box)

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if classifier.empty():
        raise RuntimeError(f"OpenCV's {CASCADE} is missing from this installation of opencv-python-headless")
    return classifier


def detect_faces(rgb: np.ndarray) -> list[Box]:
    """Frontal faces in an RGB photo (H x W x 3, uint8), largest first, in the photo's own pixels."""
    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(height, width))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    smallest = max(16, round(min(gray.shape) * MIN_FACE_SHARE))
    # note: a CascadeClassifier is not documented as thread-safe, and the API decodes in threads
    with _lock:
        found = _cascade().detectMultiScale(
            cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest)
        )
    boxes = [
        (round(x / scale), round(y / scale), round((x + w) / scale), round((y + h) / scale))
        for x, y, w, h in (found if len(found) else [])
    ]
    return sorted(boxes, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]), reverse=True)


def face_crop(face: Box, width: int, height: int, resolution: int) -> Box:
    """The square crop around `face` in a width x height photo: CROP_FACE_WIDTHS face widths wide, but never
    narrower than `resolution` when the photo allows (so the trainer does not upscale), centred on the face
    and moved back inside the photo."""
    side = min(width, height, max(round((face[2] - face[0]) * CROP_FACE_WIDTHS), resolution))
    centre_x, centre_y = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    left = min(max(0, round(centre_x - side / 2)), width - side)
    top = min(max(0, round(centre_y - side / 2)), height - side)
    return left, top, left + side, top + side


def center_crop(width: int, height: int) -> Box:
    """The largest centred square of a width x height photo (what center_crop trains on)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side
