"""How the next token is chosen: sampling (``BaseStrategy``) and beam search."""

from sat.generation.sampling_strategies.base_strategy import BaseStrategy
from sat.generation.sampling_strategies.beam_search_strategy import BeamSearchStrategy
from sat.generation.sampling_strategies.logits_processing import top_k_logits

__all__ = ["BaseStrategy", "BeamSearchStrategy", "top_k_logits"]
