"""Per-photo captions: how a photo's prompt is made from the instance prompt and its caption.

Neutral ground: the API builds each photo's prompt for the preview and its warnings, the core builds the
same prompt for the text encoder, and neither may import the other.
"""

import math
import re
from pathlib import Path

CAPTION_MODES = ("instance_only", "instance_plus_caption", "instance_plus_auto_caption")
# The modes that put a photo's caption after the instance prompt (with auto, the worker captions uncaptioned photos).
CAPTIONED_MODES = ("instance_plus_caption", "instance_plus_auto_caption")
# CLIP's 77 positions less its start and end tokens: what a prompt may use before the rest is dropped.
TOKEN_LIMIT = 75
MAX_CAPTION_CHARS = 1000

# note: CLIP's pre-tokenizer splits text into letter runs, single digits and punctuation runs; BPE then needs
# at least one token per piece, and about one per 5 letters of an uncommon word.
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)
_LETTERS_PER_TOKEN = 5


def photo_prompt(instance_prompt: str, caption: str | None, caption_mode: str) -> str:
    """The prompt a photo trains with: the instance prompt (which names the subject) always, and with
    instance_plus_caption (or instance_plus_auto_caption) its caption after it."""
    caption = (caption or "").strip()
    if caption_mode in CAPTIONED_MODES and caption:
        return f"{instance_prompt}, {caption}"
    return instance_prompt


def estimate_tokens(prompt: str) -> int:
    """A cautious count of the CLIP tokens of `prompt` (no tokenizer in the API): rather more than fewer, so a
    prompt the encoder would cut is reported."""
    return sum(max(1, math.ceil(len(piece) / _LETTERS_PER_TOKEN)) for piece in _PIECES.findall(prompt.lower()))


def caption_beside(photo: Path) -> str | None:
    """kohya's caption convention: the text of NAME.txt beside NAME.jpg, None when there is none or it is empty."""
    caption_file = photo.with_suffix(".txt")
    return (caption_file.read_text(encoding="utf-8").strip() or None) if caption_file.is_file() else None
