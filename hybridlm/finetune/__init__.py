"""Post-training on top of the trainer (train/): SFT with assistant-only loss and packing, LoRA and
QLoRA adapters in PEFT's format, DPO (and IPO, robust DPO), and knowledge distillation."""
