"""``BeamSearchStrategy``: beam search over one prompt (the batch rows are the beams).

Two modes share the constructor of the original library:

- ``deterministic=True``: classic beam search, step for step the algorithm of
  ``transformers``' ``generate(num_beams=n, do_sample=False)`` (top ``2 n`` continuations by
  accumulated log-probability, finished hypotheses scored ``logp / generated_length **
  length_penalty``, the same early-stopping heuristic), so both pick the same tokens.
- ``deterministic=False`` (the default, as in the original): candidates are *sampled* from the
  flattened beam x vocabulary distribution and ranked by accumulated log-probability; finished
  beams get the original's length penalty with ``prefer_min_length``/``prefer_max_length``, and
  the search stops when the best finished beams did not change for ``stop_n_iter_unchanged``
  steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.generation.sampling_strategies.base_strategy import broadcast_choice
from sat.generation.sampling_strategies.logits_processing import (
    apply_repetition_penalty,
    ban_repeated_ngrams,
    mask_tokens,
    top_k_logits,
)

_NEG = -1.0e9  # the score of an impossible or empty beam, as in transformers


def reorder_mems(mems, indices: torch.Tensor):
    """Keep batch rows ``indices`` of a ``KVCache`` (in place) or of the original's packed
    ``[layers, b, mem, 2h]`` mems."""
    if mems is None:
        return None
    if hasattr(mems, "reorder"):
        mems.reorder(indices)
        return mems
    if isinstance(mems, torch.Tensor):
        return mems.index_select(1, indices)
    return [m.index_select(0, indices) for m in mems]


class BeamSearchStrategy:
    """Beam search for ``filling_sequence`` (see the module docstring for the two modes).

    ``finalize`` returns the finished beams, best first (a list of 1-D token tensors) and
    ``mems=None``, or the live beams when ``consider_end=False``.
    """

    def __init__(
        self,
        num_beams: int,
        length_penalty: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        consider_end: bool = True,
        end_tokens=(),
        invalid_slices=(),
        no_repeat_ngram_size: int = 0,
        min_tgt_length: int = 0,
        repetition_penalty: float = 1.0,
        prefer_min_length: int = 5,
        prefer_max_length: int = 100,
        stop_n_iter_unchanged: int = 10,
        deterministic: bool = False,
    ):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.temperature = temperature
        self.top_k = int(top_k)
        self.top_p = top_p
        self.consider_end = consider_end
        self.end_tokens = list(end_tokens)
        self.invalid_slices = list(invalid_slices)
        self.ngram = no_repeat_ngram_size
        self.min_tgt_length = min_tgt_length
        self.repetition_penalty = repetition_penalty
        self.prefer_min_length = prefer_min_length
        self.prefer_max_length = prefer_max_length
        self.stop_n_iter_unchanged = stop_n_iter_unchanged
        self.deterministic = deterministic
        self.max_length: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.context_length: int | None = None
        self.is_done = False
        self.running_scores: torch.Tensor | None = None  # [beams] accumulated log-probabilities
        self.end_beams: list[torch.Tensor] = []
        self.end_beams_penalized_scores: list[float] = []
        self._improvable = True  # deterministic mode's early-stopping heuristic
        self._unchanged = 0  # sampled mode's stopping counter

    def start(self, context_length: int, max_length: int) -> None:
        """Called by ``filling_sequence`` before the first step: prompt and total lengths."""
        self._reset()
        self.context_length = context_length
        self.max_length = max_length

    def _log_probs(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logits = apply_repetition_penalty(logits.float(), tokens, self.repetition_penalty)
        logits = mask_tokens(logits, self.invalid_slices)
        if tokens.shape[-1] - self.context_length < self.min_tgt_length:
            logits = mask_tokens(logits, self.end_tokens)
        logits = ban_repeated_ngrams(logits, tokens, self.ngram)
        if not self.deterministic:
            logits = top_k_logits(logits / self.temperature, self.top_k, self.top_p)
        return F.log_softmax(logits, dim=-1)  # [beams, vocab]

    def forward(self, logits, tokens, mems):
        """One step: ``logits [beams, vocab]``, ``tokens [beams, s]`` -> the next beams."""
        if self.context_length is None:
            self.context_length = tokens.shape[-1]
        beams, vocab = logits.shape
        if self.running_scores is None:  # all beams start as copies of the prompt: use one
            self.running_scores = torch.full((beams,), _NEG, device=logits.device)
            self.running_scores[0] = 0.0
        step = self._log_probs(logits, tokens)  # [beams, vocab]
        scores = (step + self.running_scores[:, None]).view(-1)  # [beams * vocab]
        keep = max(2, 1 + len(self.end_tokens)) * self.num_beams
        if self.deterministic:
            candidate_scores, candidates = torch.topk(scores, keep)
        else:
            # As the original: sample from this step's distribution over the live beams.
            live = torch.where(self.running_scores > _NEG / 2, 0.0, _NEG)[:, None]
            probs = F.softmax((step + live).view(-1), dim=0)
            candidates = broadcast_choice(torch.multinomial(probs, num_samples=keep))
            candidate_scores, order = torch.sort(scores[candidates], descending=True)
            candidates = candidates[order]
        source_beams, next_tokens = candidates // vocab, candidates % vocab
        sequences = torch.cat((tokens[source_beams], next_tokens[:, None]), dim=1)  # [keep, s + 1]
        ends = torch.isin(next_tokens, torch.tensor(self.end_tokens, device=next_tokens.device, dtype=torch.long))
        if self.max_length is not None and sequences.shape[-1] >= self.max_length:
            ends = torch.ones_like(ends)  # no continuation possible: every candidate finishes

        if self.deterministic:
            self._finish_classic(sequences, candidate_scores, ends)
        else:
            self._finish_sampled(sequences, candidate_scores, ends)
        running = candidate_scores + ends.float() * _NEG
        chosen = torch.topk(running, self.num_beams).indices
        self.running_scores = running[chosen]
        if self.deterministic:
            self._update_heuristic(sequences.shape[-1], ends)
        return sequences[chosen], reorder_mems(mems, source_beams[chosen])

    def _finish_classic(self, sequences, candidate_scores, ends) -> None:
        # As transformers: only the top num_beams candidates may finish, scored by generated length.
        finishing = ends.clone()
        finishing[self.num_beams :] = False
        if not self._improvable:
            return
        generated = sequences.shape[-1] - self.context_length
        penalized = candidate_scores / generated**self.length_penalty
        for index in torch.nonzero(finishing).flatten().tolist():
            self._insert_end_beam(sequences[index], float(penalized[index]))

    def _update_heuristic(self, length: int, ends: torch.Tensor) -> None:
        full = len(self.end_beams) == self.num_beams
        if full:
            best_possible = float(self.running_scores[0]) / (length - self.context_length) ** self.length_penalty
            self._improvable = self._improvable and best_possible > min(self.end_beams_penalized_scores)
        if not self._improvable or bool(ends.all()):
            self.is_done = True

    def _finish_sampled(self, sequences, candidate_scores, ends) -> None:
        changed = False
        for index in torch.nonzero(ends[: 2 * self.num_beams]).flatten().tolist():
            score = self._original_penalty(sequences[index], candidate_scores[index])
            changed |= self._insert_end_beam(sequences[index], score)
        if changed:
            self._unchanged = 0
        elif self.end_beams:
            self._unchanged += 1
            self.is_done = self._unchanged >= self.stop_n_iter_unchanged

    def _original_penalty(self, sequence: torch.Tensor, score: torch.Tensor) -> float:
        generated = sequence.shape[-1] - self.context_length
        if generated >= self.prefer_min_length:
            penalty = self.length_penalty
        else:  # softer for very short outputs
            t = generated / self.prefer_min_length
            penalty = t * self.length_penalty + (1 - t) * min(0.5, self.length_penalty / 2)
        return float(score) / (min(self.prefer_max_length, generated) + 1) ** penalty

    def _insert_end_beam(self, sequence: torch.Tensor, score: float) -> bool:
        """Keep the best ``num_beams`` finished beams, best first; True if ``sequence`` is now best."""
        position = sum(1 for existing in self.end_beams_penalized_scores if existing >= score)
        if position >= self.num_beams:
            return False
        self.end_beams.insert(position, sequence)
        self.end_beams_penalized_scores.insert(position, score)
        del self.end_beams[self.num_beams :], self.end_beams_penalized_scores[self.num_beams :]
        return position == 0

    def finalize(self, tokens, mems):
        """The finished beams, best first (live beams count as finished when the length ran
        out), with ``mems=None``; or ``(tokens, mems)`` when ``consider_end=False``."""
        if not self.consider_end:
            self._reset()
            return tokens, mems
        if self.running_scores is None:  # the prompt filled the sequence: nothing was generated
            self._insert_end_beam(tokens[0], 0.0)
        elif not self.end_beams:  # stopped before any beam could finish
            for row in range(tokens.shape[0]):
                self._insert_end_beam(tokens[row], float(self.running_scores[row]))
        beams = list(self.end_beams)
        self._reset()
        return beams, None
