"""``Tokenizer``: the original GLM tokenizers' common part. A text tokenizer (a ``transformers``
BPE or WordPiece tokenizer, or a sentencepiece model) plus command tokens, most of them with ids
after the text vocabulary; text is split on the command tokens' texts before the text tokenizer
sees it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping

from sat.tokenization.glm.command_tokens import CommandToken, Tokenization


class Tokenizer:
    """Ids ``0 .. num_tokens - 1``: the text tokenizer's, then the command tokens' (an id below
    ``num_text_tokens`` makes a command token share a text token's id, e.g. ``<|endoftext|>``).
    Subclasses encode and decode text with ``_encode`` / ``_decode``."""

    def __init__(self, text_tokenizer, command_tokens: list[CommandToken], text_vocab: Mapping[str, int]):
        self.text_tokenizer = text_tokenizer
        self.num_text_tokens = len(text_vocab)
        self._command_tokens = command_tokens
        self.command_name_map = {command.name: command for command in command_tokens}
        self.command_token_map = {command.token: command for command in command_tokens}
        self.command_id_map = {command.Id: command for command in command_tokens}

        self._text_tokens = [f"[UNUSED{i}]" for i in range(max(text_vocab.values(), default=-1) + 1)]
        for token, index in text_vocab.items():
            self._text_tokens[index] = token
        size = max(len(self._text_tokens), max(self.command_id_map, default=-1) + 1)
        self._tokens = self._text_tokens + [f"[UNUSED{i}]" for i in range(len(self._text_tokens), size)]
        for index, command in self.command_id_map.items():
            self._tokens[index] = command.token
        self._text_token_vocab = dict(text_vocab)
        self._vocab = {command.token: index for index, command in self.command_id_map.items()}
        self._vocab.update(text_vocab)  # a text token keeps its id where a command token shares its text
        self.num_command_tokens = len(command_tokens)
        self.num_tokens = len(self._tokens)
        self.spaces_between_special_tokens = True

    @property
    def command_tokens(self) -> list[CommandToken]:
        return self._command_tokens

    @property
    def tokens(self) -> list[str]:
        """Every token's text, by id."""
        return self._tokens

    @property
    def vocab(self) -> dict[str, int]:
        """Token text -> id, command tokens included."""
        return self._vocab

    @property
    def text_tokens(self) -> list[str]:
        return self._text_tokens

    @property
    def text_token_vocab(self) -> dict[str, int]:
        return self._text_token_vocab

    @property
    def command_token_vocab(self) -> dict[str, int]:
        """Command token text -> id."""
        return {command.token: index for index, command in self.command_id_map.items()}

    def __len__(self) -> int:
        return self.num_tokens

    def __call__(self, text: str, process_fn: Callable[[str], str] | None = None) -> Tokenization:
        return self.EncodeAsIds(text, process_fn=process_fn)

    def get_command(self, name: str) -> CommandToken:
        """The command token called ``name`` (``'MASK'``, ``'gMASK'``, ``'sop'``, ``'eos'`` ...)."""
        if name not in self.command_name_map:
            raise KeyError(f"{type(self).__name__} has no command token {name!r}; it has {list(self.command_name_map)}")
        return self.command_name_map[name]

    def tokenize(self, text: str) -> list[int]:
        return self.EncodeAsIds(text).tokenization

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.DecodeIds(ids)

    def EncodeAsIds(self, text: str, process_fn: Callable[[str], str] | None = None) -> Tokenization:
        """Split ``text`` (after ``process_fn``) on the command tokens' texts, encode the text
        between them, and give each command token its id."""
        processed = process_fn(text) if process_fn is not None else text
        ids = [] if not processed.strip() else self._encode_pieces(self._split_on_command_tokens(processed))
        tokenization = Tokenization(ids, processed, text)
        tokenization.set_command_tokens(self._command_tokens)
        return tokenization

    def EncodeAsTokens(self, text: str, process_fn: Callable[[str], str] | None = None) -> Tokenization:
        tokenization = self.EncodeAsIds(text, process_fn=process_fn)
        tokenization.tokenization = [self.IdToToken(index) for index in tokenization.tokenization]
        return tokenization

    def _split_on_command_tokens(self, text: str) -> list[str]:
        pieces = [text]
        for command in self._command_tokens:
            pieces = list(
                itertools.chain.from_iterable(
                    [piece] if piece in self.command_token_map else _split_on(command, piece) for piece in pieces
                )
            )
        return pieces

    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        ids: list[int] = []
        for piece in pieces:
            if piece in self.command_token_map:
                ids.append(self.command_token_map[piece].Id)
            else:
                ids.extend(self._encode(piece))
        return ids

    def IdToToken(self, idx: int | CommandToken) -> str:
        return idx.token if isinstance(idx, CommandToken) else self._tokens[idx]

    def TokenToId(self, token: str | CommandToken) -> int:
        return token.Id if isinstance(token, CommandToken) else self._vocab[token]

    def DecodeIds(self, ids: Iterable[int | CommandToken] | Tokenization) -> str:
        """The text of ``ids``: runs of text ids decoded by the text tokenizer, command tokens as
        their texts, joined by spaces (or nothing when ``spaces_between_special_tokens`` is off)."""
        if isinstance(ids, Tokenization):
            ids = ids.tokenization
        parts, run = [], []
        for index in ids:
            command = index if isinstance(index, CommandToken) else self.command_id_map.get(index)
            if command is None:
                run.append(index)
                continue
            if run:
                parts.append(self._decode(run))
                run = []
            parts.append(command.token)
        if run:
            parts.append(self._decode(run))
        joined = (" " if self.spaces_between_special_tokens else "").join(parts)
        return self.clean_up_tokenization(joined)

    def DecodeTokens(self, tokens: Iterable[str | CommandToken]) -> str:
        return self.DecodeIds([self.TokenToId(token) for token in tokens])

    @staticmethod
    def clean_up_tokenization(out_string: str) -> str:
        return out_string

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError


def _split_on(command: CommandToken, text: str) -> list[str]:
    """``text`` split on ``command``'s text, keeping it as its own piece; the whitespace next to
    it goes where its ``lstrip`` / ``rstrip`` say; empty pieces are dropped."""
    parts = text.split(command.token)
    pieces = []
    for i, part in enumerate(parts):
        if command.rstrip and i > 0:
            part = part.lstrip()
        if command.lstrip and i < len(parts) - 1:
            part = part.rstrip()
        if part:
            pieces.append(part)
        if i < len(parts) - 1:
            pieces.append(command.token)
    return pieces
