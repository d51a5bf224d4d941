"""A stand-in for the few `torchvision.transforms` that diffusers' train_dreambooth.py uses.

It exists only so that the real script can run where torchvision cannot be installed (PyPI's torchvision does
not load beside this machine's CPU build of torch). scripts/get-train-dreambooth copies this file to
bench/vendor/shim/torchvision/transforms/__init__.py, and bench/real_script.py puts bench/vendor/shim on the
script's PYTHONPATH only when `import torchvision` fails; where torchvision imports, the script runs with the
real one.

What the script asks of it (DreamBoothDataset):

    Compose([Resize(size, interpolation=InterpolationMode.BILINEAR),
             CenterCrop(size) if center_crop else RandomCrop(size),
             ToTensor(), Normalize([0.5], [0.5])])

on PIL images. Each transform follows torchvision's semantics and does about the same work:

- Resize(int): the shorter side becomes `size`, the longer `int(size * long / short)`, with the same PIL filter
  (BILINEAR); an image whose shorter side already is `size` comes back as it is (torchvision does the same).
- CenterCrop: torchvision's box, top = round((height - size) / 2), left likewise; PIL's crop.
- RandomCrop: offsets from torch.randint (the global torch generator, as torchvision), PIL's crop.
- ToTensor: HWC uint8 -> CHW float32 in [0, 1].
- Normalize(mean, std): (x - mean) / std per channel, out of place.

Only PIL images are supported (the script gives nothing else); anything more raises.

One more thing it must do: transformers (5.x) decides that torchvision is installed from importlib.util.find_spec
alone, which the stand-in answers once it is on the path, and then imports torchvision.transforms.functional, .v2
and .io, which the stand-in has none of (the script fails importing diffusers). So, on import, it tells transformers
the truth: torchvision is not installed (see `_hide_from_transformers`; only as torchvision.transforms, not when
imported as bench.torchvision_stand_in). diffusers and accelerate read the
package's metadata, of which the stand-in has none, so they see no torchvision already.
"""

import enum
import numbers

import numpy as np
import torch
from PIL import Image

__all__ = ["CenterCrop", "Compose", "InterpolationMode", "Normalize", "RandomCrop", "Resize", "ToTensor"]


class InterpolationMode(enum.Enum):
    """torchvision's names for the resampling filters."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_PIL_FILTERS = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.NEAREST_EXACT: Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    InterpolationMode.BOX: Image.Resampling.BOX,
    InterpolationMode.HAMMING: Image.Resampling.HAMMING,
    InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}


def _check_pil(image) -> None:
    if not isinstance(image, Image.Image):
        raise TypeError(f"the torchvision stand-in takes PIL images only, not {type(image).__name__}")


def _square(size) -> tuple[int, int]:
    """(height, width) of a crop given as an int or a one- or two-item sequence."""
    if isinstance(size, numbers.Number):
        return int(size), int(size)
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[0]), int(size[1])


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


class Resize:
    """Resize a PIL image: an int matches the shorter side keeping the aspect ratio, a pair is (height, width)."""

    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
        if max_size is not None:
            raise NotImplementedError("the torchvision stand-in has no Resize max_size")
        self.size = size
        self.interpolation = interpolation

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing."""
        if isinstance(self.size, numbers.Number) or len(self.size) == 1:
            short_target = int(self.size if isinstance(self.size, numbers.Number) else self.size[0])
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(short_target * long / short)
            return (short_target, new_long) if width <= height else (new_long, short_target)
        return int(self.size[1]), int(self.size[0])

    def __call__(self, image):
        _check_pil(image)
        size = self.output_size(*image.size)
        if size == image.size:
            return image
        resample = _PIL_FILTERS.get(self.interpolation, self.interpolation)
        return image.resize(size, resample)


class CenterCrop:
    def __init__(self, size):
        self.size = _square(size)

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """PIL's (left, top, right, bottom) of the centred crop."""
        crop_height, crop_width = self.size
        if crop_height > height or crop_width > width:
            raise NotImplementedError("the torchvision stand-in does not pad a crop larger than the image")
        top = round((height - crop_height) / 2.0)
        left = round((width - crop_width) / 2.0)
        return left, top, left + crop_width, top + crop_height

    def __call__(self, image):
        _check_pil(image)
        return image.crop(self.box(*image.size))


class RandomCrop:
    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        if padding is not None or pad_if_needed:
            raise NotImplementedError("the torchvision stand-in has no RandomCrop padding")
        self.size = _square(size)

    def origin(self, width: int, height: int) -> tuple[int, int]:
        """(top, left) of a random crop, drawn as torchvision draws it."""
        crop_height, crop_width = self.size
        if height < crop_height or width < crop_width:
            raise ValueError(f"required crop size {self.size} is larger than input image size {(height, width)}")
        if (height, width) == (crop_height, crop_width):
            return 0, 0
        top = torch.randint(0, height - crop_height + 1, size=(1,)).item()
        left = torch.randint(0, width - crop_width + 1, size=(1,)).item()
        return top, left

    def __call__(self, image):
        _check_pil(image)
        top, left = self.origin(*image.size)
        crop_height, crop_width = self.size
        return image.crop((left, top, left + crop_width, top + crop_height))


class ToTensor:
    """A PIL image to a CHW float32 tensor in [0, 1] (8-bit modes; mode "1" counts as 0 or 255)."""

    def __call__(self, image):
        _check_pil(image)
        if image.mode not in ("L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            raise NotImplementedError(f"the torchvision stand-in does not convert {image.mode} images")
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True))
        if image.mode == "1":
            pixels = pixels * 255
        pixels = pixels.view(image.size[1], image.size[0], len(image.getbands()))
        return pixels.permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255)


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor):
        if not self.inplace:
            tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)
        if (std == 0).any():
            raise ValueError("std evaluated to zero, leading to division by zero")
        if mean.ndim == 1:
            mean = mean.view(-1, 1, 1)
        if std.ndim == 1:
            std = std.view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


def _hide_from_transformers() -> None:
    """Make transformers' torchvision checks (all through import_utils._is_package_available) say "not installed"."""
    try:
        from transformers.utils import import_utils
    except ImportError:
        return
    check = getattr(import_utils, "_is_package_available", None)
    if check is None or getattr(check, "hides_torchvision", False):
        return

    # note: transformers 5 answers (exists, version) always, 4.x a bare bool unless asked for the version
    pairs = isinstance(check("json"), tuple)

    def without_torchvision(pkg_name, return_version=False, *args, **kwargs):
        if pkg_name != "torchvision":
            return check(pkg_name, return_version, *args, **kwargs)
        if return_version:
            return False, "N/A"
        return (False, None) if pairs else False

    without_torchvision.hides_torchvision = True
    import_utils._is_package_available = without_torchvision
    if hasattr(import_utils, "_torchvision_available"):  # transformers 4.x kept the answer in a constant
        import_utils._torchvision_available = False
    for name in ("is_torchvision_available", "is_torchvision_v2_available"):
        cache_clear = getattr(getattr(import_utils, name, None), "cache_clear", None)
        if cache_clear is not None:
            cache_clear()


# note: only where the stand-in is torchvision (the copy in bench/vendor/shim), not when imported as bench's module
if __name__ == "torchvision.transforms":
    _hide_from_transformers()
