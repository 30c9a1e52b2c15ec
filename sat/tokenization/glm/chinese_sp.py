"""``ChineseSPTokenizer``: GLM's command tokens over a sentencepiece model (GLM's Chinese
models use ``cog-pretrain.model``)."""

from __future__ import annotations

import os

from sat.tokenization.glm.base import Tokenizer
from sat.tokenization.glm.layout import block_and_mask_tokens, command
from sat.tokenization.sentencepiece_tokenizer import SentencePieceTokenizer

# The original's names for the sentencepiece model it shipped (cog-pretrain.model).
SHIPPED_NAMES = ("glm-large", "glm-10b")
MODEL_FILE = "cog-pretrain.model"


def cog_pretrain_path() -> str:
    """Where ``cog-pretrain.model`` is looked for: ``$SAT_HOME/tokenizers/`` (else
    ``~/.sat_models/tokenizers/``, the default ``SAT_HOME`` of the model downloads)."""
    home = os.path.expanduser(os.environ.get("SAT_HOME") or "~/.sat_models")
    return os.path.join(os.path.abspath(home), "tokenizers", MODEL_FILE)


def _model_file(model_type_or_path: str) -> str:
    if model_type_or_path in SHIPPED_NAMES:
        path = cog_pretrain_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"glm_ChineseSPTokenizer {model_type_or_path!r} needs the sentencepiece model {MODEL_FILE} (the "
                "original shipped it as sat/tokenization/embed_assets/chinese_sentencepiece/cog-pretrain.model; it "
                f"is not included here): put it at {path} (the folder follows $SAT_HOME), or pass the path of a "
                "sentencepiece .model file as tokenizer_model_type"
            )
        return path
    if os.path.isfile(model_type_or_path):
        return model_type_or_path
    if os.path.isfile(model_type_or_path + ".model"):  # the original accepted the name without .model
        return model_type_or_path + ".model"
    raise FileNotFoundError(
        f"glm_ChineseSPTokenizer: {model_type_or_path!r} is no sentencepiece model file (nor "
        f"{model_type_or_path}.model); pass the path of one, or 'glm-large' / 'glm-10b' with {MODEL_FILE} at "
        f"{cog_pretrain_path()}"
    )


class ChineseSPTokenizer(Tokenizer):
    """``model_type_or_path``: ``'glm-large'`` or ``'glm-10b'`` (``cog-pretrain.model``, see
    ``cog_pretrain_path``), or a sentencepiece ``.model`` file. Every command token follows the
    vocabulary ``N``: ``<|endoftext|>`` N, ``[SEP]`` N+1, ``[CLS]`` N+2, ``[MASK]`` N+3, ``[UNK]``
    N+4, ``sop`` N+6, ``eop`` N+7, then ``sMASK``/``gMASK`` N+8/N+9 (``'glm-10b'``: ``gMASK`` N+7,
    sharing ``eop``'s id as in the original, and ``sMASK`` N+8) and ``dBLOCK``."""

    def __init__(
        self,
        model_type_or_path: str,
        add_block_symbols: bool = False,
        add_task_mask: bool = False,
        add_decoder_mask: bool = False,
        **kwargs,
    ):
        text_tokenizer = SentencePieceTokenizer(_model_file(model_type_or_path))
        processor = text_tokenizer.processor
        vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
        n = processor.get_piece_size()
        command_tokens = [command("pad", n), command("eos", n)]
        command_tokens += block_and_mask_tokens(["sep", "ENC", "MASK", "unk"], n + 1)
        if add_block_symbols:
            command_tokens += block_and_mask_tokens(["sop", "eop"], n + 6)
            glm_10b = model_type_or_path == "glm-10b"
            next_id = n + 7 if glm_10b else n + 8
            if add_task_mask:
                command_tokens += block_and_mask_tokens(["gMASK", "sMASK"] if glm_10b else ["sMASK", "gMASK"], next_id)
                next_id += 2
            if add_decoder_mask:
                command_tokens.append(command("dBLOCK", next_id))
        super().__init__(text_tokenizer, command_tokens, vocab)
        if model_type_or_path in SHIPPED_NAMES:
            self.spaces_between_special_tokens = False

    def _encode(self, text: str) -> list[int]:
        return self.text_tokenizer.encode(text)

    def _decode(self, ids: list[int]) -> str:
        return self.text_tokenizer.decode(ids)
