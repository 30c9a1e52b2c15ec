"""Generation: ``filling_sequence`` (one prompt, several samples or beams), batched generation
over different prompts, encoder-decoder generation (T5), and the token-choice strategies."""

from sat.generation.autoregressive_sampling import (
    evaluate_perplexity,
    filling_sequence,
    get_masks_and_position_ids_default,
    stream_filling_sequence,
    update_mems,
)
from sat.generation.batch_generation import batch_filling_sequence
from sat.generation.compile import compile_for_generation
from sat.generation.encoder_decoder import encoder_decoder_filling_sequence
from sat.generation.sampling_strategies import BaseStrategy, BeamSearchStrategy

__all__ = [
    "BaseStrategy",
    "BeamSearchStrategy",
    "batch_filling_sequence",
    "compile_for_generation",
    "encoder_decoder_filling_sequence",
    "evaluate_perplexity",
    "filling_sequence",
    "get_masks_and_position_ids_default",
    "stream_filling_sequence",
    "update_mems",
]
