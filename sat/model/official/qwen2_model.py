"""Qwen2: LLaMA with biases on the query, key and value projections (none on the output
projection or the MLP), GQA, and optionally sliding-window attention on some layers.

Everything is a backbone option: ``use_qkv_bias`` here, ``num_multi_query_heads``,
``rotary_base`` and a per-layer ``sliding_window`` from the checkpoint (``sat.hf`` fills them
from a ``Qwen2Config``).
"""

from __future__ import annotations

from sat.model.official.llama_model import LLaMAModel


class Qwen2Model(LLaMAModel):
    """``LLaMAModel`` with ``use_qkv_bias=True`` and ``use_bias=False``."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **{"use_bias": False, "use_qkv_bias": True, **kwargs})
