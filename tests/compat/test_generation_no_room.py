"""A chat script whose prompt already fills `max_length` (the original's llama split_model.py
with a short --max_length): beam search returns the prompt instead of failing in finalize."""

from __future__ import annotations

import torch

from sat.generation.autoregressive_sampling import filling_sequence
from sat.generation.sampling_strategies import BeamSearchStrategy
from sat.model import GPT2Model
from sat.model.mixins import CachedAutoregressiveMixin


def test_beam_search_with_a_prompt_that_fills_the_sequence_returns_it():
    sizes = dict(num_layers=1, vocab_size=50, hidden_size=16, num_attention_heads=2, max_sequence_length=16)
    args = GPT2Model.get_args(**sizes)
    torch.manual_seed(0)
    model = GPT2Model(args).eval()
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    prompt = torch.arange(3, 11)  # 8 tokens, max_length 8: no -1 left to fill
    strategy = BeamSearchStrategy(num_beams=1, consider_end=True, end_tokens=[0])
    with torch.no_grad():
        beams = filling_sequence(model, prompt, batch_size=1, strategy=strategy)[0]
        assert [b.tolist() for b in beams] == [list(range(3, 11))]
        # the strategy is reusable afterwards: one free position gets one generated token
        beams = filling_sequence(model, torch.cat([prompt, torch.tensor([-1])]), batch_size=1, strategy=strategy)[0]
    assert len(beams) == 1 and beams[0][:8].tolist() == list(range(3, 11)) and beams[0].shape == (9,)
