"""Tokenizer: BPE training, special tokens, save/load, batch helpers, byte pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tokenizers

from jaxrl_desktop.tokenizer import BOS, DEFAULT_SPECIAL_TOKENS, EOS, PAD, Tokenizer

CORPUS = [
    'click(640, 360)', 'type("hello world")', 'files.mkdir("/home/user/docs")', 'hotkey("ctrl", "s")',
    "The router forwards packets between networks.", "网络 协议 与 安全", "Ünïcödé façade — naïve café",
] * 50


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=500)


def test_special_tokens_and_roundtrip(tok):
    assert [tok.token_to_id(t) for t in DEFAULT_SPECIAL_TOKENS] == list(range(len(DEFAULT_SPECIAL_TOKENS)))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 100 < tok.vocab_size <= 500
    for text in [*CORPUS[:7], "unseen words: zebra 42 ☃ 🚀", "  spaces  and\nnewlines\t"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    ids = tok.encode("<|user|>click(1, 2)", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[1] == tok.token_to_id("<|user|>") and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "click(1, 2)"
    assert tok.decode(ids, skip_special_tokens=False) == f"{BOS}<|user|>click(1, 2){EOS}"
    # digits are split one by one (numbers in actions compose from single digits)
    assert len(tok.encode("640360")) == 6
    # merges learned: frequent words are single tokens
    assert len(tok.encode("click")) == 1


def test_batch_api_and_padding(tok):
    texts = ["click(#3)", "done()", 'type("a much longer piece of text")']
    batch = tok.encode_batch(texts, add_eos=True)
    assert batch == [tok.encode(t, add_eos=True) for t in texts]
    assert tok.decode_batch(batch) == texts
    right, rmask = tok.pad(batch)
    left, lmask = tok.pad(batch, side="left")
    assert right.dtype == np.int32 and right.shape == left.shape == (3, max(map(len, batch)))
    for i, ids in enumerate(batch):
        assert right[i][rmask[i]].tolist() == ids and left[i][lmask[i]].tolist() == ids
        assert rmask[i, : len(ids)].all() and lmask[i, -len(ids) :].all()
        assert (right[i][~rmask[i]] == tok.pad_id).all()
    trunc, tmask = tok.pad(batch, length=3)
    assert trunc[2].tolist() == batch[2][-3:] and tmask.all(axis=1).tolist() == [True, True, True]


def test_save_load(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path.name == "tokenizer.json" and json.loads(path.read_text())["model"]["type"] == "BPE"
    again = Tokenizer.load(tmp_path / "tok")
    assert again.vocab_size == tok.vocab_size and again.eos_id == tok.eos_id and again.pad_id == tok.pad_id
    for text in CORPUS[:7]:
        assert again.encode(text) == tok.encode(text)


def test_load_foreign_tokenizer_json(tmp_path):
    """An HF-style tokenizer.json with other special names (Qwen uses <|endoftext|>, <|im_end|>)."""
    raw = tokenizers.Tokenizer(tokenizers.models.BPE())
    raw.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer=trainer)
    raw.save(str(tmp_path / "tokenizer.json"))
    guessed = Tokenizer.load(tmp_path)
    assert guessed.eos_token == "<|endoftext|>" and guessed.pad_id == guessed.eos_id and guessed.bos_id is None
    chat = Tokenizer.load(tmp_path / "tokenizer.json", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    assert chat.eos_id == 2 and chat.pad_id == 0
    assert chat.decode(chat.encode("hello world")) == "hello world"
    with pytest.raises(KeyError):
        Tokenizer.load(tmp_path, eos_token="<missing>")


def test_token_bytes_concatenate_to_the_decoding(tok):
    pieces = tok.token_bytes()
    assert len(pieces) == tok.vocab_size
    assert all(pieces[tok.token_to_id(t)] is None for t in (PAD, BOS, EOS))
    assert tok.is_byte_level()
    rng = np.random.default_rng(0)
    ids_ok = [i for i, p in enumerate(pieces) if p]
    for _ in range(300):
        ids = rng.choice(ids_ok, size=int(rng.integers(1, 10))).tolist()
        assert tok.decode(ids) == b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
    # a multi-byte character can be split over tokens yet joins up again
    text = "网络 协议"
    assert b"".join(pieces[i] for i in tok.encode(text)) == text.encode()
