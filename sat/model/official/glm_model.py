"""GLM: the backbone with 2-D positions, an absolute and a block position per token, whose
embeddings are summed (``block_position_embedding``). The output head is the tied default."""

from __future__ import annotations

import torch

from sat.model.base_model import BaseMixin, BaseModel


class BlockPositionEmbeddingMixin(BaseMixin):
    """``position_embedding_forward`` for ``position_ids [b, 2, s]``: the backbone's position
    embedding of row 0 plus ``block_position_embeddings`` of row 1 (the position inside a
    blank being filled; 0 in the context)."""

    def __init__(
        self, max_sequence_length: int, hidden_size: int, init_method_std: float = 0.02, skip_init: bool = False
    ):
        super().__init__()
        self.max_sequence_length = max_sequence_length
        self.hidden_size = hidden_size
        self.block_position_embeddings = torch.nn.Embedding(max_sequence_length, hidden_size)
        if not skip_init:
            torch.nn.init.normal_(self.block_position_embeddings.weight, mean=0.0, std=init_method_std)

    def position_embedding_forward(self, position_ids: torch.Tensor, **kw_args) -> torch.Tensor:
        positions, block_positions = position_ids[:, 0], position_ids[:, 1]  # [b, s] each
        return self.transformer.position_embeddings(positions) + self.block_position_embeddings(block_positions)


def get_masks_and_position_ids_glm(seq: torch.Tensor, mask_position: int, context_length: int):
    """GLM's blank filling for ``filling_sequence`` (bind the keywords with ``functools.partial``).

    ``seq`` is the context (``context_length`` tokens, a mask token at ``mask_position``), then
    the start-of-piece token and ``-1`` for each token to generate. The context attends
    bidirectionally and the blank causally; the blank's tokens all sit at ``mask_position``
    with block positions 1, 2, ... Returns ``tokens [1, L]``, ``attention_mask [1, 1, L, L]``
    and ``position_ids [1, 2, L]``.
    """
    length = len(seq)
    attention_mask = torch.ones(length, length, device=seq.device).tril_()
    attention_mask[:, :context_length] = 1  # everyone sees the whole context
    positions = torch.full((length,), mask_position, dtype=torch.long, device=seq.device)
    positions[:context_length] = torch.arange(context_length, device=seq.device)
    block_positions = torch.zeros(length, dtype=torch.long, device=seq.device)
    block_positions[context_length:] = torch.arange(1, length - context_length + 1, device=seq.device)
    return seq.unsqueeze(0), attention_mask[None, None], torch.stack((positions, block_positions))[None]


class GLMModel(BaseModel):
    """GLM with 2-D (absolute + block) position embeddings and the tied output head."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.add_mixin(
            "block_position_embedding",
            BlockPositionEmbeddingMixin(
                args.max_sequence_length, args.hidden_size, skip_init=getattr(args, "skip_init", False)
            ),
        )

    @classmethod
    def add_model_specific_args(cls, parser):
        """GLM's pretraining and tokenizer arguments (read by data pipelines, not the model)."""
        group = parser.add_argument_group("GLM", "GLM Configurations")
        group.add_argument("--block-lm", action="store_true", help="BlockLM (blank infilling) pretraining")
        group.add_argument("--masked-lm", action="store_true", help="the masked-LM objective")
        group.add_argument("--bert-prob", type=float, default=0.5)
        group.add_argument("--gpt-infill-prob", type=float, default=0.5)
        group.add_argument("--gpt-min-ratio", type=float, default=0.5)
        group.add_argument("--gap-sentence-prob", type=float, default=0.0)
        group.add_argument("--gap-sentence-ratio", type=float, default=0.15)
        group.add_argument("--avg-block-length", type=int, default=3)
        group.add_argument("--short-seq-prob", type=float, default=0.0)
        group.add_argument("--single-span-prob", type=float, default=0.0)
        group.add_argument("--task-mask", action="store_true", help="separate masks for generation and blanks")
        group.add_argument("--no-shuffle-block", action="store_true", help="keep blanks in order when filling")
        group.add_argument("--no-block-position", action="store_true", help="rough absolute instead of block positions")
        group.add_argument("--sentinel-token", action="store_true", help="sentinel tokens instead of 2-D positions")
        group.add_argument("--block-mask-prob", type=float, default=0.0)
        group.add_argument("--context-mask-ratio", type=float, default=0.0)
        group.add_argument("--random-position", action="store_true", help="random start positions")
        group.add_argument("--cloze-eval", action="store_true", help="evaluate a cloze-style dataset")
        group.add_argument("--old-checkpoint", action="store_true", help="checkpoint of the old GLM library")
        group.add_argument(
            "--tokenizer-model-type",
            type=str,
            default=None,
            help="the glm_* tokenizers' vocabulary: gpt2, roberta, bert-large-uncased (or another cached Hub "
            "name), glm-large / glm-10b (cog-pretrain.model), or a local folder or file (docs/tokenizers.md)",
        )
        return parser
