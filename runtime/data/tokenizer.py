"""Tokenizers: a tiny character-level one for the demo, or a Hugging Face directory.

Nothing is downloaded, so the demo ships its own tokenizer: printable ASCII
characters plus pad/bos/eos, 98 ids, which fits the tiny presets' 256-entry
vocabulary. A real tokenizer directory (tokenizer.json, ...) loads through
transformers when a spec names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.errors import UserError

_FIRST_CHAR, _LAST_CHAR = 32, 126  # ' ' .. '~'


@dataclass(frozen=True)
class CharTokenizer:
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    _offset: int = 3  # id of chr(32)

    @property
    def vocab_size(self) -> int:
        return self._offset + _LAST_CHAR - _FIRST_CHAR + 1

    def encode(self, text: str) -> list[int]:
        """Characters outside printable ASCII map to '?'."""
        out = []
        for ch in text:
            code = ord(ch)
            if not _FIRST_CHAR <= code <= _LAST_CHAR:
                code = ord("?")
            out.append(code - _FIRST_CHAR + self._offset)
        return out

    def decode(self, ids: list[int]) -> str:
        chars = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= self._offset and i - self._offset <= _LAST_CHAR - _FIRST_CHAR:
                chars.append(chr(i - self._offset + _FIRST_CHAR))
        return "".join(chars)

    def token_id(self, char: str) -> int:
        return self.encode(char)[0]


class HFTokenizer:
    """A Hugging Face tokenizer directory, behind the same small interface."""

    def __init__(self, path: str | Path) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as err:  # pragma: no cover - transformers is a test extra
            raise UserError(f"{path}: loading a Hugging Face tokenizer needs transformers") \
                from err
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a tokenizer directory ({err})") from None
        self.eos_id = self._tok.eos_token_id
        self.bos_id = self._tok.bos_token_id
        self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None \
            else self.eos_id
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(path: str | None):
    """The char tokenizer when `path` is None or 'char', else a HF directory."""
    if path in (None, "char"):
        return CharTokenizer()
    return HFTokenizer(path)
