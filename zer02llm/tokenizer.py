"""Byte-level BPE tokenizer: a thin wrapper over a Hugging Face `tokenizers` tokenizer.json.

`Tokenizer.load()` reads the shipped tokenizer (or any directory holding a tokenizer.json,
e.g. minimind's `model/`), and exposes encode/decode, the special ids, the chat template,
a fingerprint for caching, and the raw bytes of every token. `StreamDecoder` turns a stream
of generated ids into text pieces without ever splitting a multi-byte UTF-8 character.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from zer02llm.config import ConfigError
from zer02llm.resources import shipped_path

__all__ = ["Tokenizer", "TokenizerError", "StreamDecoder", "bytes_to_unicode"]

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# where transformers 5 saves the chat template (and transformers 4.43+ reads it first)
TEMPLATE_FILE = "chat_template.jinja"

# Fallback special-token names (ChatML), used when tokenizer_config.json does not name them.
DEFAULT_BOS = "<|im_start|>"
DEFAULT_EOS = "<|im_end|>"
DEFAULT_PAD = "<|endoftext|>"


class TokenizerError(ConfigError):
    """A tokenizer directory whose files cannot be used (not JSON, not a tokenizer, unreadable).

    A ConfigError, as it comes from `tokenizer.path` or a checkpoint: the commands report it in one
    line with exit status 2 instead of a traceback."""


def _read_json(path: Path, what: str) -> tuple[bytes, object]:
    """The bytes of `path` and their parsed JSON, or a TokenizerError naming the file and what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        return raw, json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: the {what} is not UTF-8 text (a binary file?)") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: the {what} is not valid JSON ({e.msg} at line {e.lineno} column "
                             f"{e.colno})") from None


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level table: each byte 0..255 -> a printable unicode character.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
    bytes (controls, space, etc.) are given the characters 256, 257, ... in byte order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


_UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in bytes_to_unicode().items()}


def _token_name(value: object) -> str | None:
    """A special-token entry of tokenizer_config.json: a plain string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class Tokenizer:
    """A byte-level BPE tokenizer loaded from a directory holding `tokenizer.json`.

    Attributes:
        path: the directory it was loaded from.
        vocab_size: number of ids, added/special tokens included.
        bos_id, eos_id, pad_id: special ids (from tokenizer_config.json, else ChatML names).
        fingerprint: sha256 hex digest of the tokenizer.json bytes (a cache key).
        chat_template: the Jinja chat template of chat_template.jinja, else of tokenizer_config.json, or None.
        special_ids: ids of the special added tokens.
    """

    path: Path
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    fingerprint: str
    chat_template: str | None
    special_ids: frozenset[int]

    def __init__(self, path: Path, raw_json: bytes, config: dict) -> None:
        """Use `Tokenizer.load`; this takes the already-read tokenizer.json bytes and config."""
        self.path = path
        self.fingerprint = hashlib.sha256(raw_json).hexdigest()
        try:
            self._tok = _HFTokenizer.from_str(raw_json.decode("utf-8"))
        except Exception as e:  # the library raises a bare Exception with serde's message
            raise TokenizerError(f"{path / TOKENIZER_FILE} is JSON but not a Hugging Face `tokenizers` file "
                                 f"({e}); expected the tokenizer.json that tokenizers/transformers save") from None
        self.config = config
        self.chat_template = config.get("chat_template") if isinstance(
            config.get("chat_template"), str
        ) else None

        added = self._tok.get_added_tokens_decoder()  # id -> AddedToken
        self.vocab_size = max(
            self._tok.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1
        )
        self.special_ids = frozenset(i for i, t in added.items() if t.special)

        self.bos_id = self._special_id("bos_token", DEFAULT_BOS)
        self.eos_id = self._special_id("eos_token", DEFAULT_EOS)
        self.pad_id = self._special_id("pad_token", DEFAULT_PAD)

        self._token_bytes = self._build_token_bytes(added)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Tokenizer":
        """Load from a directory holding tokenizer.json (+ optional tokenizer_config.json, chat_template.jinja).

        `None` loads the tokenizer shipped with the project (`tokenizer/`).
        Raises FileNotFoundError if the directory or its tokenizer.json is missing, TokenizerError
        if a file is unreadable, not JSON, or not a tokenizer.
        """
        directory = shipped_path("tokenizer") if path is None else Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory not found: {directory} (expected a directory holding "
                f"{TOKENIZER_FILE} and optionally {CONFIG_FILE})"
            )
        tok_file = directory / TOKENIZER_FILE
        if not tok_file.is_file():
            raise FileNotFoundError(
                f"no {TOKENIZER_FILE} in tokenizer directory {directory} (expected a Hugging Face "
                f"`tokenizers` file {tok_file}, optionally with {CONFIG_FILE})"
            )
        config: dict = {}
        config_file = directory / CONFIG_FILE
        if config_file.exists():
            _, loaded = _read_json(config_file, "tokenizer config")
            if not isinstance(loaded, dict):
                raise TokenizerError(f"{config_file}: expected a JSON object, got {type(loaded).__name__}")
            config = loaded
        template_file = directory / TEMPLATE_FILE
        if template_file.is_file():  # it wins over tokenizer_config.json's, as in transformers
            try:
                config = {**config, "chat_template": template_file.read_text(encoding="utf-8")}
            except UnicodeDecodeError as e:
                raise TokenizerError(f"{template_file}: the chat template is not UTF-8 text ({e.reason})") from None
        # parsed here first so that bad JSON is named as such, not as serde's "key must be a string"
        raw, parsed = _read_json(tok_file, "tokenizer file")
        if not isinstance(parsed, dict):
            raise TokenizerError(f"{tok_file}: expected a JSON object (a `tokenizers` file), got "
                                 f"{type(parsed).__name__}")
        return cls(directory, raw, config)

    def _special_id(self, key: str, default: str) -> int:
        """Id of the config's `key` token if it names one in the vocabulary, else of `default`."""
        candidates = [name for name in (_token_name(self.config.get(key)), default) if name]
        for name in candidates:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        config_file = self.path / CONFIG_FILE
        where = (f"name it as {key} in {config_file}" if config_file.is_file() else
                 f"there is no {config_file} to name it")
        raise TokenizerError(
            f"tokenizer at {self.path}: no {key} found (tried {', '.join(map(repr, candidates))}); {where}"
        )

    def _build_token_bytes(self, added: dict) -> list[bytes]:
        """Raw bytes of every id: byte-level mapping reversed; added tokens -> UTF-8 content."""
        table: list[bytes] = []
        for token_id in range(self.vocab_size):
            if token_id in added:
                table.append(added[token_id].content.encode("utf-8"))
                continue
            token = self._tok.id_to_token(token_id)
            if token is None:
                table.append(b"")
                continue
            table.append(
                b"".join(
                    bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE else c.encode("utf-8")
                    for c in token
                )
            )
        return table

    @property
    def backend(self) -> "_HFTokenizer":
        """The tokenizers library's own Tokenizer, for bulk calls (encode_batch_fast) without per-token Python."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no bos/eos added (special-token strings in the text still match)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of many texts at once, in parallel (Rust threads)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of `ids`; special tokens are kept unless `skip_special`. Bad UTF-8 -> U+FFFD."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (may be an incomplete UTF-8 sequence)."""
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size})")
        return self._token_bytes[token_id]

    def byte_lengths(self) -> list[int]:
        """UTF-8 bytes of text each id stands for, 0 for special tokens (bos/eos/chat markers are no
        text): the denominator of bits per byte, a tokenizer-independent loss."""
        return [0 if i in self.special_ids else len(b) for i, b in enumerate(self._token_bytes)]

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary string of `token_id` (byte-level form), or None."""
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string (byte-level form), or None."""
        return self._tok.token_to_id(token)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"Tokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id}, "
            f"fingerprint={self.fingerprint[:12]!r})"
        )


class StreamDecoder:
    """Turns a stream of token ids into text pieces that never split a multi-byte UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        """Decode ids of `tokenizer`; special tokens produce no text when `skip_special`."""
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Feed one id; returns the newly completed text ('' while a character is incomplete)."""
        if self.skip_special and token_id in self.tokenizer.special_ids:
            return ""
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever remains buffered (an incomplete character becomes U+FFFD); then resets."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
