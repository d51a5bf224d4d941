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
