"""The original library's first LoRA mixin, by name: now the adapters of ``LoraMixin``."""

from __future__ import annotations

from sat.model.finetune.lora2 import LoraMixin


class LoRAMixin(LoraMixin):
    """``LoRAMixin(hidden_size, layer_num, r, lora_alpha, lora_dropout, layer_range)``: LoRA on
    self-attention Q, K, V (the fused ``query_key_value``) and the output ``dense``.

    Same adapters and parameter names as ``LoraMixin`` (``cross_attention=False``, as the old
    mixin had none); like it, add it with ``reinit=True``. ``hidden_size`` is read from the
    model instead and only kept for reference.
    """

    def __init__(
        self,
        hidden_size: int,
        layer_num: int = 24,
        r: int = 0,
        lora_alpha: float = 1,
        lora_dropout: float = 0.0,
        layer_range: list[int] | None = None,
    ):
        super().__init__(layer_num, r, lora_alpha, lora_dropout, layer_range, cross_attention=False)
        self.hidden_size = hidden_size
