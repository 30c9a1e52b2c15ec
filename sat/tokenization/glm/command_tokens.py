"""``CommandToken`` (a special token with a name, its text and its id) and ``Tokenization`` (the
ids ``EncodeAsIds`` returns, with the text they came from), as the original's GLM tokenizers
had them."""

from __future__ import annotations

from collections import namedtuple

COMMAND_TUPLE = namedtuple("CommandToken", ("name", "token", "Id"))


class CommandToken:
    """A special token: ``name`` (``'MASK'``), its text (``'[MASK]'``) and ``Id``. ``lstrip`` /
    ``rstrip``: whether it swallows the whitespace on its left / right when text is split on it
    (``"a [MASK]"`` encodes as ``a`` then ``[MASK]``)."""

    def __init__(self, name: str, token: str, Id: int, lstrip: bool = False, rstrip: bool = False):
        self.name = name
        self.token = token
        self.Id = Id
        self.lstrip = lstrip
        self.rstrip = rstrip

    def __repr__(self) -> str:
        return str(COMMAND_TUPLE(self.name, self.token, self.Id))


class Tokenization:
    """The ids of one encoded text (``tokenization``), the text (``text``, ``original_text``
    before ``process_fn``) and, once ``set_command_tokens`` ran, each command token's id as an
    attribute named after it (``tokenization.MASK``; its text instead with ``asIds=False``)."""

    def __init__(
        self,
        tokenization: list,
        text: str | None = None,
        original_text: str | None = None,
        command_tokens: list[CommandToken] | None = None,
        asIds: bool = True,
    ):
        self.tokenization = tokenization
        self.text = tokenization if text is None else text
        self.original_text = self.text if original_text is None else original_text
        self.command_tokens = command_tokens
        self.asIds = asIds
        self.parse_command_tokens()

    def set_command_tokens(self, command_tokens: list[CommandToken]) -> None:
        self.command_tokens = command_tokens
        self.parse_command_tokens()

    def parse_command_tokens(self) -> None:
        for command in self.command_tokens or ():
            setattr(self, command.name, command.Id if self.asIds else command.token)

    def __getitem__(self, index):
        return self.tokenization[index]

    def __len__(self) -> int:
        return len(self.tokenization)

    def __str__(self) -> str:
        return f"Tokenization = {self.tokenization}, Text = {self.text}"

    def insert(self, idx: int, other) -> None:
        """Insert a command token (its id; its text too at either end) or another tokenization."""
        if isinstance(other, CommandToken):
            self.tokenization.insert(idx, other.Id)
            if idx == 0:
                self.text, self.original_text = other.token + self.text, other.token + self.original_text
            elif idx == len(self.tokenization) - 1:
                self.text, self.original_text = self.text + other.token, self.original_text + other.token
        else:
            self.tokenization = self.tokenization[:idx] + other.tokenization + self.tokenization[idx:]

    def append(self, other) -> Tokenization:
        """Append a command token, another tokenization, or one id."""
        if isinstance(other, CommandToken | Tokenization):
            self.extend(other)
        else:
            self.tokenization.append(other)
        return self

    def extend(self, other) -> Tokenization:
        """Extend by a command token, a list of them, another tokenization, or a list of ids."""
        if isinstance(other, CommandToken):
            other = [other]
        if isinstance(other, Tokenization):
            self.tokenization.extend(other.tokenization)
            self.text += other.text
            self.original_text += other.original_text
        elif other and isinstance(other[0], CommandToken):
            self.tokenization.extend(command.Id for command in other)
            added = "".join(command.token for command in other)
            self.text += added
            self.original_text += added
        else:
            self.tokenization.extend(other)
        return self
