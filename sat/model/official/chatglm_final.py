"""``ChatGLMFinalMixin``: the untied output head of the ChatGLM line (v1 to 4).

The original defined it in ``chatglm_model.py`` and the later ChatGLM files imported it from
there; it lives here so that every ChatGLM file can share it.
"""

from __future__ import annotations

from sat.model.official.gpt2_model import GPT2FinalMixin


class ChatGLMFinalMixin(GPT2FinalMixin):
    """``final_forward`` through an untied ``lm_head`` (``[vocab, hidden]``, no bias), the
    logits of the whole vocabulary on every model-parallel rank: the original's head gathered
    its output whatever ``parallel_output`` said."""

    def __init__(self, vocab_size: int, hidden_size: int, skip_init: bool = False):
        super().__init__(vocab_size, hidden_size, skip_init=skip_init)

    def final_forward(self, logits, **kw_args):
        return super().final_forward(logits, **{**kw_args, "parallel_output": False})  # [b, s, vocab]
