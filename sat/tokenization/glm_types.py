"""``get_tokenizer``'s ``glm_*`` types: which GLM tokenizer, built from which arguments."""

from __future__ import annotations

_TYPES = ("glm_GPT2BPETokenizer", "glm_BertWordPieceTokenizer", "glm_ChineseSPTokenizer")


def glm_options(args) -> tuple[str, bool, bool]:
    """``(tokenizer_model_type, add_task_mask, add_decoder_mask)`` from ``args``, as the original
    read them (``--task-mask``, ``--block-mask-prob`` > 0: GLMModel's arguments)."""
    model_type = getattr(args, "tokenizer_model_type", None)
    if not model_type:
        raise ValueError(
            "the glm_* tokenizers need args.tokenizer_model_type (--tokenizer-model-type): gpt2, roberta, "
            "bert-large-uncased, glm-large, glm-10b, or a local vocabulary folder / file"
        )
    return model_type, bool(getattr(args, "task_mask", False)), getattr(args, "block_mask_prob", 0.0) > 0.0


def glm_tokenizer(tokenizer_type: str, args):
    """The GLM tokenizer ``tokenizer_type`` names, with block symbols (sop, eop...) as in the original."""
    if tokenizer_type not in _TYPES:
        raise ValueError(f"unknown GLM tokenizer_type {tokenizer_type!r}; the GLM tokenizers are {list(_TYPES)}")
    from sat.tokenization import glm

    model_type, task_mask, decoder_mask = glm_options(args)
    cls = getattr(glm, tokenizer_type.removeprefix("glm_"))
    return cls(model_type, add_block_symbols=True, add_task_mask=task_mask, add_decoder_mask=decoder_mask)
