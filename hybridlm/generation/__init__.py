"""Turning logits into text: sampling, stop conditions, the batched `generate` loop, beam search and
speculative decoding."""

from .beam import BeamHypothesis, BeamSearchResult, beam_search
from .generate import FINISH_REASONS, GenerationResult, GenerationStats, generate
from .proposers import DraftModelProposer, PromptLookupProposer, layer_skip_draft
from .processors import (apply_repetition_penalty, apply_temperature, min_p_filter, seen_mask, top_k_filter,
                         top_p_filter)
from .sampling import SamplingConfig, make_generator, next_tokens, process_logits
from .speculative import SpeculativeStats, speculative_generate
from .stopping import StopWatcher, find_stop

__all__ = [
    "FINISH_REASONS", "BeamHypothesis", "BeamSearchResult", "DraftModelProposer", "GenerationResult", "GenerationStats",
    "PromptLookupProposer", "SamplingConfig", "SpeculativeStats", "StopWatcher", "apply_repetition_penalty",
    "apply_temperature", "beam_search", "find_stop", "generate", "layer_skip_draft", "make_generator", "min_p_filter",
    "next_tokens", "process_logits", "seen_mask", "speculative_generate", "top_k_filter", "top_p_filter",
]
