"""Aspect-ratio buckets: the training sizes a photo may keep its shape in, and which one a photo goes to.

Neutral ground, torch-free: the core trains each photo at its bucket (worker/dreambooth/data.py) and the API
shows the same bucket per photo (backend/photo_checks.py), and neither may import the other.

As kohya's sd-scripts and diffusers' newer scripts do: `resolution` is the area, and a bucket is a (width, height)
of multiples of BUCKET_STEP whose area is at most resolution^2, each side between half and twice the resolution.
"""

import math

BUCKET_STEP = 64  # bucket sides are multiples of this (a VAE's 8 x the UNet's three halvings)


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """The aspect-ratio buckets of a resolution, as (width, height): for each width from half the resolution to
    twice it, the tallest height (a multiple of BUCKET_STEP, in the same range) whose area is at most
    resolution^2, and the same turned; and the square. Sorted by width."""
    area, step = resolution * resolution, BUCKET_STEP
    low, high = max(step, resolution // 2 // step * step), max(step, 2 * resolution // step * step)
    side = max(step, resolution // step * step)
    sizes = {(side, side)}
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            sizes |= {(width, height), (height, width)}
    return sorted(sizes)


def bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The (width, height) of the bucket whose aspect ratio is nearest a width x height photo's, in log ratio (so
    2:1 and 1:2 are as far from square); of two as near, the larger."""
    aspect = math.log(width / height)
    return min(
        bucket_sizes(resolution), key=lambda size: (abs(math.log(size[0] / size[1]) - aspect), -size[0] * size[1])
    )
