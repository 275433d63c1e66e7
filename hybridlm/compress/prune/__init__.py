"""Pruning: unstructured and 2:4 masks, and structured removal of MLP channels, attention heads and
layers (a smaller model), ranked by weight, activation or gradient importance, with optional
recovery fine-tuning through the trainer. `prune_model(model, PruneConfig(...), calib)` (api.py).
"""

from .api import PruneSummary, count_parameters, prune_model, save_pruned
from .config import METHODS, PruneConfig, PruneError, resolve_prune_config

__all__ = ["METHODS", "PruneConfig", "PruneError", "PruneSummary", "count_parameters", "prune_model",
           "resolve_prune_config", "save_pruned"]
