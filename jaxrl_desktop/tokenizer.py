"""Tokenizers: train a small byte-level BPE on environment text, or load an HF ``tokenizer.json``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|action|>")
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, *ROLE_TOKENS)

# Fallback names tried, in order, when loading a foreign tokenizer.json.
_EOS_GUESSES = (EOS, "<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
_PAD_GUESSES = (PAD, "<pad>", "[PAD]", "<|endoftext|>")
_BOS_GUESSES = (BOS, "<s>", "<bos>", "<|begin_of_text|>", "[CLS]")


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with pad/bos/eos ids and batch helpers."""

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        *,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ):
        self.tok = tok
        self.eos_token = eos_token or self._guess(_EOS_GUESSES, "eos")
        self.pad_token = pad_token or self._guess(_PAD_GUESSES, None) or self.eos_token
        self.bos_token = bos_token or self._guess(_BOS_GUESSES, None)
        self.eos_id = self._id(self.eos_token)
        self.pad_id = self._id(self.pad_token)
        self.bos_id = None if self.bos_token is None else self._id(self.bos_token)

    def _guess(self, names: Sequence[str], what: str | None) -> str | None:
        for name in names:
            if self.tok.token_to_id(name) is not None:
                return name
        if what:
            raise ValueError(f"no {what} token found (tried {list(names)}); pass {what}_token=")
        return None

    def _id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    # ---------------------------------------------------------------------- construction
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 2048,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Train a byte-level BPE (digits split one by one) with ``special_tokens`` first in the vocab."""
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        specials = set(special_tokens)
        return cls(
            tok,
            pad_token=PAD if PAD in specials else None,
            bos_token=BOS if BOS in specials else None,
            eos_token=EOS if EOS in specials else None,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> Tokenizer:
        """Load a ``tokenizer.json`` (a file, or a directory holding one), ours or an HF model's."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        return cls(tokenizers.Tokenizer.from_file(str(path)), pad_token=pad_token, bos_token=bos_token,
                   eos_token=eos_token)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (``path`` may be a directory); returns the file path."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path))
        return path

    # ----------------------------------------------------------------------------- API
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        return self._id(token)

    @property
    def special_ids(self) -> set[int]:
        return {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        encs = self.tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, add_bos, add_eos) for e in encs]

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise ValueError("this tokenizer has no bos token")
            ids = [self.bos_id, *ids]
        return [*ids, self.eos_id] if add_eos else list(ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.tok.decode_batch([[int(i) for i in ids] for ids in batch], skip_special_tokens=skip_special_tokens)

    def pad(
        self,
        seqs: Sequence[Sequence[int]],
        length: int | None = None,
        side: Literal["left", "right"] = "right",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pad (and, keeping the end, truncate) to ``[B, length]`` int32 tokens and a bool mask."""
        length = length or max((len(s) for s in seqs), default=1) or 1
        tokens = np.full((len(seqs), length), self.pad_id, np.int32)
        mask = np.zeros((len(seqs), length), bool)
        for i, s in enumerate(seqs):
            s = list(s)[-length:]
            sl = slice(length - len(s), length) if side == "left" else slice(0, len(s))
            tokens[i, sl] = s
            mask[i, sl] = True
        return tokens, mask

    def is_byte_level(self) -> bool:
        """Whether the decoder is plain byte-level (GPT-2 style; ours, Qwen2, GLM-4)."""
        decoder = json.loads(self.tok.to_str()).get("decoder") or {}
        return decoder.get("type") == "ByteLevel"

    def token_bytes(self) -> list[bytes | None]:
        """Each id's contribution to the decoded UTF-8 byte stream (None for special tokens), so that
        ``decode(ids)`` is the lossy UTF-8 decoding of the concatenation. Used by the grammar mask.
        Exact for byte-level tokenizers; otherwise each token is decoded alone (tokens that are not
        valid UTF-8 alone become None)."""
        special = self.special_ids
        byte_level = self.is_byte_level()
        out: list[bytes | None] = []
        for i in range(self.vocab_size):
            if i in special:
                out.append(None)
            elif byte_level:
                piece = self.tok.id_to_token(i)
                out.append(None if piece is None else bytes(_UNICODE_TO_BYTE[c] for c in piece))
            else:
                text = self.tok.decode([i], skip_special_tokens=False)
                out.append(None if (not text or "\ufffd" in text) else text.encode("utf-8"))
        return out


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-character map, inverted (character -> byte)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_UNICODE_TO_BYTE = _byte_level_alphabet()
