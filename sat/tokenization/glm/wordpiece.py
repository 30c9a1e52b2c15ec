"""``BertWordPieceTokenizer``: GLM's command tokens over a BERT WordPiece vocabulary, encoded by
``transformers``' ``BertTokenizerFast``."""

from __future__ import annotations

from sat.tokenization.glm.base import Tokenizer
from sat.tokenization.glm.command_tokens import CommandToken
from sat.tokenization.glm.layout import block_and_mask_tokens, task_and_decoder_masks

# What the original's BERT clean-up joined back: a space before punctuation and contractions.
_CLEAN_UP = (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m")
_CLEAN_UP += (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")


class BertWordPieceTokenizer(Tokenizer):
    """``tokenizer_model_type``: a cached Hub name (``bert-base-uncased``, ``bert-large-uncased``...),
    a ``vocab.txt`` or a folder holding one. Lower-cased unless the name contains ``-cased`` or
    ``chinese``. The command tokens ``[PAD]`` ``[CLS]`` ``[MASK]`` ``[UNK]`` ``[SEP]`` are the
    vocabulary's own; ``sop``, ``eop`` (and ``gMASK``, ``sMASK``, ``dBLOCK``, sentinel and
    ``added_command_tokens``) follow it. ``cache_dir`` and ``kwargs``: accepted as the original's
    were, unused."""

    def __init__(
        self,
        tokenizer_model_type: str | None = None,
        cache_dir: str | None = None,
        add_block_symbols: bool = False,
        add_sentinel_token: int = 0,
        add_task_mask: bool = False,
        add_decoder_mask: bool = False,
        added_command_tokens: list[tuple[str, str]] | None = None,
        **kwargs,
    ):
        from transformers import BertTokenizerFast

        from sat.tokenization.glm.files import bert_vocab_file

        if tokenizer_model_type is None:
            raise ValueError("BertWordPieceTokenizer needs tokenizer_model_type (e.g. bert-large-uncased)")
        lower = not ("-cased" in tokenizer_model_type or "chinese" in tokenizer_model_type)
        text_tokenizer = BertTokenizerFast(vocab=bert_vocab_file(tokenizer_model_type), do_lower_case=lower)
        text_tokenizer.model_max_length = int(1e12)  # GLM feeds long documents; no length warnings
        vocab = text_tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
        own = {token: vocab[token] for token in ("[PAD]", "[CLS]", "[MASK]", "[UNK]", "[SEP]") if token in vocab}
        if len(own) < 5:
            raise ValueError(f"the {tokenizer_model_type!r} vocabulary lacks some of [PAD] [CLS] [MASK] [UNK] [SEP]")
        command_tokens = [
            CommandToken("pad", "[PAD]", own["[PAD]"]),
            CommandToken("ENC", "[CLS]", own["[CLS]"]),
            CommandToken("MASK", "[MASK]", own["[MASK]"]),
            CommandToken("unk", "[UNK]", own["[UNK]"]),
            CommandToken("sep", "[SEP]", own["[SEP]"]),
            CommandToken("eos", "[PAD]", own["[PAD]"]),
        ]
        added = ["sop", "eop", *task_and_decoder_masks(add_task_mask, add_decoder_mask)] if add_block_symbols else []
        command_tokens += block_and_mask_tokens(added, len(vocab), lstrip=False)
        next_id = len(vocab) + len(added)
        for i in range(1, add_sentinel_token):
            command_tokens += [
                CommandToken(f"MASK{i}", f"[MASK{i}]", next_id),
                CommandToken(f"sop{i}", f"<|startofpiece{i}|>", next_id + 1),
            ]
            next_id += 2
        for offset, (name, token) in enumerate(added_command_tokens or ()):
            command_tokens.append(CommandToken(name, token, next_id + offset))
        super().__init__(text_tokenizer, command_tokens, vocab)

    def _encode(self, text: str) -> list[int]:
        return self.text_tokenizer.encode(text, add_special_tokens=False)

    def _decode(self, ids: list[int]) -> str:
        return self.text_tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    @staticmethod
    def clean_up_tokenization(out_string: str) -> str:
        """Join a space before punctuation and English contractions back, as BERT's decoding does."""
        for spaced, joined in _CLEAN_UP:
            out_string = out_string.replace(spaced, joined)
        return out_string
