"""Vision-language models on any hybridlm decoder (Transformer or hybrid Mamba-2).

Two ways to make a language model see (the EfficientML lecture; seeds/):
  - flamingo: a ViT encodes each image, a Perceiver Resampler turns its patches into a few visual
    tokens, and gated cross-attention layers (tanh gate, zero at init) inserted between the frozen
    LM's blocks read them (Alayrac et al. 2022);
  - tokens: the visual features, projected into the token embedding space (linear or 2-layer MLP),
    take the place of image placeholder tokens in the prompt (PaLM-E, Driess et al. 2023; LLaVA,
    Liu et al. 2023).
"""
