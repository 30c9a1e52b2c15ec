"""The GLM tokenizers (``get_tokenizer`` types ``glm_GPT2BPETokenizer``,
``glm_BertWordPieceTokenizer``, ``glm_ChineseSPTokenizer``): the original's command tokens and
``EncodeAsIds`` / ``DecodeIds`` API over ``transformers`` (BPE, WordPiece) and sentencepiece
text tokenizers, whose files come from local paths or the local HF cache. See
docs/tokenizers.md."""

from sat.tokenization.glm.tokenization import *  # noqa: F403 (every name, as the original's package)
from sat.tokenization.glm.tokenization import __all__  # noqa: F401
