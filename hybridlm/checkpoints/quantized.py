"""Quantized model directories: what `hybridlm quantize --out DIR` writes and `load_model(DIR)` reads.

    DIR/quantized.json      format tag and version, the ModelConfig, how it was quantized, and per
                            quantized linear: fmt, group_size, in/out features, bias
    DIR/model.safetensors   every tensor of the model: float parameters under their own names, and
                            per QuantLinear `<name>.codes`, `.scales` (+ `.offsets`, `.lut`, `.bias`)
    DIR/tokenizer.json, DIR/tokenizer_config.json

No pickle anywhere: JSON and safetensors. Loading builds the Decoder from the config, swaps in a
QuantLinear for each listed module with exactly the stored codes and scales, and fills the rest;
every tensor in the file must be used and every parameter filled, or it is a CheckpointError.
A tied LM head that stayed float is not stored twice (the Decoder ties it to the embedding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..nn.quant import QuantFormatError, QuantizedWeight, QuantLinear
from .atomic import atomic_dir
from .errors import CheckpointError

MARKER = "quantized.json"
WEIGHTS = "model.safetensors"
FORMAT, VERSION = "hybridlm-quantized", 1
_QUANT_KEYS = ("codes", "scales", "offsets", "lut", "bias")


def is_quantized_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()


def _quant_modules(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def _kind(module: QuantLinear) -> str:
    """The loader a quantized module needs (LOADERS): its `quant_spec()["kind"]`, or "linear"."""
    spec = module.quant_spec() if hasattr(module, "quant_spec") else {}
    return spec.get("kind", "linear")


def _build_linear(weight: QuantizedWeight, bias, spec: dict, take) -> nn.Module:
    return QuantLinear(weight, bias)


def _build_w8a8(weight: QuantizedWeight, bias, spec: dict, take) -> nn.Module:
    from ..nn.quant.w8a8 import W8A8Linear

    return W8A8Linear(weight, bias, act=spec["act"], act_scale=take("act_scale"), input_scale=take("input_scale"))


# kind -> build(QuantizedWeight, bias, spec from the JSON, take(tensor leaf name) -> tensor or None).
# A new QuantLinear subclass defines quant_spec() -> {"kind": ..., its plain attributes} and adds
# one line here; its persistent buffers are saved under its name and handed back through `take`.
LOADERS = {"linear": _build_linear, "w8a8": _build_w8a8}


def quantized_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a quantized directory stores for `model` (contiguous CPU copies)."""
    quant = _quant_modules(model)
    tensors = {}
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in quant and _kind(quant[owner]) == "linear" and leaf not in _QUANT_KEYS:
            continue  # run-time state a fast path may keep (repacked codes): rebuilt at load
        tensors[key] = t
    head = getattr(model, "lm_head", None)
    if type(head) is nn.Linear and head.weight is getattr(getattr(model, "embed", None), "weight", None):
        tensors.pop("lm_head.weight", None)  # tied: it is embed.weight
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_quantized(model: nn.Module, tokenizer, path: str | os.PathLike, quantization: dict[str, Any],
                   overwrite: bool = False) -> Path:
    """Write `model` (a Decoder holding QuantLinears) as a quantized directory, atomically.
    quantization: how it was made (method, bits, ... ; stored in the JSON as is)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory")
    modules = {}
    for name, m in _quant_modules(model).items():
        spec = dict(m.quant_spec()) if hasattr(m, "quant_spec") else {"kind": "linear"}
        if spec.setdefault("kind", "linear") not in LOADERS:
            raise CheckpointError(f"{name}: no loader for quantized modules of kind {spec['kind']!r}")
        modules[name] = {"fmt": m.fmt, "group_size": m.group_size, "in_features": m.in_features,
                         "out_features": m.out_features, "bias": m.bias is not None, **spec}
    meta = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
            "quantization": quantization, "modules": modules, "weights": WEIGHTS}
    tensors = quantized_tensors(model)
    try:
        with atomic_dir(path, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp / WEIGHTS, 0o666 & ~mask)  # safetensors creates 0600; look like the other files
            (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            if tokenizer is not None:
                tokenizer.to_hf_files(tmp)
    except FileExistsError as e:
        raise CheckpointError(f"{e} (use --overwrite to replace it)") from None
    return path


def read_quantized_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The quantized.json of a directory, checked for format and version."""
    file = Path(path) / MARKER
    try:
        meta = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read it: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a hybridlm quantized model description")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{file} has format version {meta.get('version')}; this hybridlm reads version {VERSION}")
    return meta


def read_quantized_config(path: str | os.PathLike) -> ModelConfig:
    try:
        return ModelConfig.from_dict(read_quantized_meta(path)["config"])
    except (ConfigError, TypeError, KeyError) as e:
        raise CheckpointError(f"{Path(path) / MARKER}: bad model config: {e}") from None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _swap_in(model: nn.Module, name: str, spec: dict, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Replace the nn.Linear `name` by a QuantLinear made from its stored tensors (popped)."""
    try:
        linear = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"{where}: quantized module {name} does not exist in this model") from None
    if type(linear) is not nn.Linear or (linear.out_features, linear.in_features) != (spec["out_features"], spec["in_features"]):
        raise CheckpointError(f"{where}: quantized module {name} does not match the model's layer there")
    try:
        weight = QuantizedWeight(spec["fmt"], tensors.pop(f"{name}.codes"), tensors.pop(f"{name}.scales"),
                                 spec["group_size"], spec["in_features"], tensors.pop(f"{name}.offsets", None),
                                 tensors.pop(f"{name}.lut", None))
    except KeyError as e:
        raise CheckpointError(f"{where}: tensor {e} of quantized module {name} is missing") from None
    except QuantFormatError as e:
        raise CheckpointError(f"{where}: {name}: {e}") from None
    if weight.out_features != spec["out_features"]:
        raise CheckpointError(f"{where}: {name} has {weight.out_features} rows, the description says {spec['out_features']}")
    bias = tensors.pop(f"{name}.bias", None)
    if spec.get("bias") and bias is None:
        raise CheckpointError(f"{where}: the bias of {name} is missing")
    kind = spec.get("kind", "linear")
    if kind not in LOADERS:
        raise CheckpointError(f"{where}: {name} is a quantized module of kind {kind!r}, which this hybridlm cannot load")
    try:
        module = LOADERS[kind](weight, bias, spec, lambda leaf: tensors.pop(f"{name}.{leaf}", None))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{where}: {name}: {e}") from None
    _replace(model, name, module)


def load_quantized(path: str | os.PathLike, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"):
    """A quantized directory -> (Decoder in eval mode with QuantLinears, Tokenizer).

    dtype: of the float parameters (embedding, norms, linears left float); None keeps float32.
    Quantized codes and scales are kept exactly as stored."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..models.decoder import Decoder
    from ..tokenizer import Tokenizer
    from .gguf import _SkipInit  # every parameter is filled from the file: skip the random init

    path = Path(path)
    meta = read_quantized_meta(path)
    cfg = read_quantized_config(path)
    try:
        tensors = load_file(str(path / meta.get("weights", WEIGHTS)))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path / meta.get('weights', WEIGHTS)}: {e}") from None
    with _SkipInit():
        model = Decoder(cfg)
    for name, spec in meta.get("modules", {}).items():
        _swap_in(model, name, spec, tensors, path)
    quant = _quant_modules(model)
    expected = {k for k in model.state_dict() if k.rpartition(".")[0] not in quant}
    if cfg.tie_embeddings and type(model.lm_head) is nn.Linear:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or unexpected:
        what = f"lacks {missing[:4]}" if missing else f"has tensors the model does not use: {unexpected[:4]}"
        raise CheckpointError(f"{path / WEIGHTS} {what}")
    dtype = dtype or torch.float32
    for p in model.parameters():  # not model.to(dtype): derived RoPE tables and quantized buffers stay
        p.data = p.data.to(dtype)
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path / WEIGHTS}: {str(e).splitlines()[-1].strip()}") from None
    return model.to(device).eval(), Tokenizer.from_file(path)


def quantized_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Bytes of a quantized directory read from its safetensors header (no tensor is loaded):
    quantized linears as stored and as float32, everything else, and the method."""
    from safetensors import safe_open

    path = Path(path)
    meta = read_quantized_meta(path)
    quant_bytes = other_bytes = 0
    modules = meta.get("modules", {})
    with safe_open(str(path / meta.get("weights", WEIGHTS)), framework="pt") as f:
        for key in f.keys():
            sl = f.get_slice(key)
            numel = 1
            for d in sl.get_shape():
                numel *= d
            size = numel * torch.empty((), dtype=_DTYPES[sl.get_dtype()]).element_size()
            if key.rpartition(".")[0] in modules:
                quant_bytes += size
            else:
                other_bytes += size
    float_bytes = sum(4 * m["out_features"] * (m["in_features"] + (1 if m.get("bias") else 0)) for m in modules.values())
    return {"quantization": meta.get("quantization", {}), "quantized_linears": len(modules),
            "quantized_bytes": quant_bytes, "quantized_float32_bytes": float_bytes,
            "other_bytes": other_bytes, "total_bytes": quant_bytes + other_bytes,
            "float32_total_bytes": float_bytes + other_bytes}  # the rest is stored float32


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "U8": torch.uint8,
           "I8": torch.int8, "I32": torch.int32, "I64": torch.int64, "F64": torch.float64, "BOOL": torch.bool}
