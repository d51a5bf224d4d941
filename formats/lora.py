"""LoRA files: the formats a LoRA run is downloaded in and the file each is kept as."""

# A LoRA run's two files, in a LoRA job's output and in each kept step's folder (the worker's lora.py
# writes them): diffusers' own layout (its default file name), and kohya's, which AUTOMATIC1111 and
# ComfyUI load.
LORA_FILES = {"lora": "pytorch_lora_weights.safetensors", "lora_kohya": "kohya.safetensors"}
LORA_FORMATS = tuple(LORA_FILES)
