"""Model formats in and out: HF safetensors directories, GGUF files, and the registry of names."""
