"""hybridlm: build, run and measure Transformer and hybrid Mamba-2 language models."""

__version__ = "0.1.0"
