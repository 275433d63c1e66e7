"""Compression: quantizers that rewrite a model's linears in place (the forward is untouched).

`quantize_model(model, QuantizeConfig(method=...), calib)` is the entry point (api.py); the methods
are listed in registry.py; calibration data comes from calibration.py.
"""

from .api import QuantizeSummary, quantize_model
from .calibration import Calibration, build_calibration, heldout_text
from .config import CompressError, QuantizeConfig

__all__ = ["Calibration", "CompressError", "QuantizeConfig", "QuantizeSummary", "build_calibration",
           "heldout_text", "quantize_model"]
