"""Quantized linear layers: the stored formats (formats.py) and the module that runs them (linear.py)."""

from .formats import FORMATS, QuantFormatError, QuantizedWeight, dequantize_ref, pack_int4, unpack_int4
from .linear import QuantLinear, quant_linear_fast_ref, quant_linear_ref, quantize_linears, set_quant_modes

__all__ = ["FORMATS", "QuantFormatError", "QuantizedWeight", "QuantLinear", "dequantize_ref", "pack_int4",
           "quant_linear_fast_ref", "quant_linear_ref", "quantize_linears", "set_quant_modes", "unpack_int4"]
