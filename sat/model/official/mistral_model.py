"""Mistral: LLaMA (GQA, no biases) with sliding-window attention in every layer.

The window is the backbone's ``sliding_window`` (``--sliding-window``, Mistral 7B's 4096 by
default): each query sees the keys less than that many positions back, in the full forward
and in cached decoding alike (see docs/backbone.md).
"""

from __future__ import annotations

from sat.model.official.llama_model import LLaMAModel


class MistralModel(LLaMAModel):
    """``LLaMAModel`` with ``use_bias=False`` and a sliding window (``args.sliding_window``)."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **{"use_bias": False, **kwargs})

    @classmethod
    def add_model_specific_args(cls, parser):
        super().add_model_specific_args(parser)
        group = parser.add_argument_group("Mistral", "Mistral Configurations")
        group.add_argument(
            "--sliding-window", type=int, default=4096, help="attention window in tokens (0: full attention)"
        )
        return parser
