"""Quantized linear layers: the stored formats (formats.py) and the module that runs them (linear.py)."""

from .formats import FORMATS, QuantFormatError, QuantizedWeight, dequantize_ref, pack_int4, unpack_int4
from .linear import QuantLinear, quant_linear_ref, quantize_linears

__all__ = ["FORMATS", "QuantFormatError", "QuantizedWeight", "QuantLinear", "dequantize_ref", "pack_int4",
           "quant_linear_ref", "quantize_linears", "unpack_int4"]
