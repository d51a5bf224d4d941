"""Learned token embeddings (textual inversion, pivotal tuning's first phase): the file they download as.

AUTOMATIC1111's safetensors layout: one tensor of shape (vectors, width) per text encoder, under `emb_params`
for the one-encoder families (SD 1.x, 2.x) and under `clip_l` and `clip_g` for SDXL's two. AUTOMATIC1111 and
ComfyUI name the token after the file; the header also says it (`placeholder_token`), for diffusers'
`load_textual_inversion(..., token=...)`.
"""

EMBEDDING_FILE = "embedding.safetensors"  # in a pivotal job's output and in each of its kept steps' folders
EMBEDDING_FORMAT = "embedding"

# The keys of the vectors, one per text encoder in the family's order.
EMBEDDING_KEYS = {1: ("emb_params",), 2: ("clip_l", "clip_g")}


def dreambooth_method(training_method: str, pivotal_second_phase: str = "full") -> str:
    """What a run's Dreambooth steps train, "full" or "lora": for pivotal tuning, its second phase."""
    return pivotal_second_phase if training_method == "pivotal" else training_method


def added_tokens(training_method: str, num_vectors: int = 1) -> int:
    """The tokens a run adds to its base model's vocabulary (pivotal tuning's), which single files leave out."""
    return num_vectors if training_method == "pivotal" else 0
