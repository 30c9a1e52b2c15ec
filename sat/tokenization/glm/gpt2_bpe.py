"""``GPT2BPETokenizer``: GLM's command tokens over a GPT-2 (or RoBERTa) byte-level BPE
vocabulary, encoded by ``transformers``' ``GPT2TokenizerFast``."""

from __future__ import annotations

from sat.tokenization.glm.base import Tokenizer
from sat.tokenization.glm.command_tokens import CommandToken
from sat.tokenization.glm.layout import block_and_mask_tokens, task_and_decoder_masks


class GPT2BPETokenizer(Tokenizer):
    """``model_type_or_path``: ``'gpt2'`` or ``'roberta'`` (the original's names; read from the
    HF cache copies of ``gpt2`` / ``roberta-base``), another cached Hub name, or a folder with
    ``vocab.json`` and ``merges.txt``. A name starting with ``roberta`` maps the command tokens
    onto RoBERTa's own ``<s>``, ``</s>``, ``<pad>``, ``<mask>`` and ``<unk>``. ``cache_dir`` and
    ``kwargs``: accepted as the original's were, unused."""

    def __init__(
        self,
        model_type_or_path: str,
        cache_dir: str | None = None,
        add_block_symbols: bool = False,
        add_task_mask: bool = False,
        add_decoder_mask: bool = False,
        **kwargs,
    ):
        from transformers import GPT2TokenizerFast

        from sat.tokenization.glm.files import vocabulary_folder

        folder = vocabulary_folder(model_type_or_path, ("vocab.json", "merges.txt"))
        text_tokenizer = GPT2TokenizerFast.from_pretrained(folder, local_files_only=True)
        text_tokenizer.model_max_length = int(1e12)  # GLM feeds long documents; no length warnings
        vocab = text_tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
        next_id = len(vocab)
        if model_type_or_path.startswith("roberta"):
            own = _ids_of(vocab, ("</s>", "<pad>", "<s>", "<mask>", "<unk>"), model_type_or_path)
            command_tokens = [
                CommandToken("pad", "<|endoftext|>", own["</s>"]),
                CommandToken("eos", "<|endoftext|>", own["</s>"]),
                CommandToken("sep", "[SEP]", own["<pad>"]),
                CommandToken("ENC", "[CLS]", own["<s>"]),
                CommandToken("MASK", "[MASK]", own["<mask>"], lstrip=True),
                CommandToken("unk", "[UNK]", own["<unk>"]),
            ]
            added = ["sop", "eop"] if add_block_symbols else []
        else:
            end = _ids_of(vocab, ("<|endoftext|>",), model_type_or_path)["<|endoftext|>"]
            command_tokens = [CommandToken("pad", "<|endoftext|>", end), CommandToken("eos", "<|endoftext|>", end)]
            added = ["sop", "eop", "ENC", "MASK", "sep", "unk"] if add_block_symbols else []
        if add_block_symbols:
            added += task_and_decoder_masks(add_task_mask, add_decoder_mask)
        command_tokens += block_and_mask_tokens(added, next_id)
        super().__init__(text_tokenizer, command_tokens, vocab)

    def _encode(self, text: str) -> list[int]:
        return self.text_tokenizer.encode(text, add_special_tokens=False)

    def _decode(self, ids: list[int]) -> str:
        return self.text_tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def _ids_of(vocab: dict[str, int], tokens: tuple[str, ...], name: str) -> dict[str, int]:
    missing = [token for token in tokens if token not in vocab]
    if missing:
        raise ValueError(f"the {name!r} vocabulary has no {missing}: the GLM command tokens need them")
    return {token: vocab[token] for token in tokens}
