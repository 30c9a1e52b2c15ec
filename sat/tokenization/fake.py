"""``FakeTokenizer``: a vocabulary size and nothing else, for models trained on token ids."""

from __future__ import annotations


class FakeTokenizer:
    """Stands in for a tokenizer where only the number of tokens matters."""

    def __init__(self, num_tokens: int):
        self.num_tokens = num_tokens

    @property
    def vocab_size(self) -> int:
        return self.num_tokens

    def __len__(self) -> int:
        return self.num_tokens
