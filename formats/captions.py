"""Per-photo captions: how a photo's prompt is made from the instance prompt and its caption.

Neutral ground: the API builds each photo's prompt for the preview and its warnings, the core builds the
same prompt for the text encoder, and neither may import the other.
"""

import math
import re

CAPTION_MODES = ("instance_only", "instance_plus_caption")
# CLIP's 77 positions less its start and end tokens: what a prompt may use before the rest is dropped.
TOKEN_LIMIT = 75
MAX_CAPTION_CHARS = 1000

# note: CLIP's pre-tokenizer splits text into letter runs, single digits and punctuation runs; BPE then needs
# at least one token per piece, and about one per 5 letters of an uncommon word.
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)
_LETTERS_PER_TOKEN = 5


def photo_prompt(instance_prompt: str, caption: str | None, caption_mode: str) -> str:
    """The prompt a photo trains with: the instance prompt (which names the subject) always, and with
    instance_plus_caption its caption after it."""
    caption = (caption or "").strip()
    if caption_mode == "instance_plus_caption" and caption:
        return f"{instance_prompt}, {caption}"
    return instance_prompt


def estimate_tokens(prompt: str) -> int:
    """A cautious count of the CLIP tokens of `prompt` (no tokenizer in the API): rather more than fewer, so a
    prompt the encoder would cut is reported."""
    return sum(max(1, math.ceil(len(piece) / _LETTERS_PER_TOKEN)) for piece in _PIECES.findall(prompt.lower()))
