"""A SYNTHETIC few-shot task on which demonstration ORDER matters, and a tiny decoder that has learned it.

Nothing here is real-world data, and the "LLM" is not a pretrained model: there is none on this
machine, so the experiment builds one honestly by training the shared tiny
:class:`~jaxrl_desktop.models.Decoder` (well under a CPU minute) on generated prompts.

World
  * facts: each key (a common English noun) has one true code, a digit ``0-9``;
  * demonstrations: ``"{source} {key} {code} ;"``. Sources ``manual`` / ``catalog`` are reliable
    (they state the true code), ``guide`` / ``report`` are unreliable (they state a wrong code);
    the names are arbitrary labels with equal MiniLM similarity to the questions (see ``RELIABLE``);
  * question: ``"what is {key} ?"``; the gold answer is the key's true code. Prompt = the
    demonstrations in order, then the question (:func:`prompt_text`); the answer is one token.

The decoder's behaviour (what it is trained to do, on random keys, sources and codes): a
recency-weighted vote over the codes in its context, ``p(code) = sum of w_i over demonstrations i
with that code``, ``w_i ~ decay ** (distance from the end)`` (:func:`rule_distribution`; ``decay=0.3``
gives the last demonstration ~70% of the vote). It reads neither the question's key nor the sources.
This is a deliberately simple caricature of two documented few-shot biases of real LLMs, majority
label bias and recency bias (Zhao et al., 2021, "Calibrate before use"); a content-matching rule
("copy the last demonstration with the question's key") was tried first but a 2-layer model does not
learn it within the CPU budget, which the tests need.

Why order matters: a question's candidates contain reliable and unreliable demonstrations of its key
(plus other keys' demonstrations). The SAME set of demonstrations answers correctly when the reliable
ones come last and wrongly when the unreliable ones do. Dense similarity and the pre-ranker measure
topical relevance only (reliable and unreliable demonstrations are equally relevant and, by the
choice of source names, equally similar), so pre-ranking order is right about half of the time; a ranker trained on the decoder's own log p(gold | ordered
demonstrations) can learn from each demonstration's MiniLM embedding which ones to place last.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import optax
import tokenizers
from flax import nnx
from jax.sharding import Mesh
from tokenizers import models, pre_tokenizers

from jaxrl_desktop.model_configs import DecoderConfig, get_config
from jaxrl_desktop.models import Decoder, make_lm_loss
from jaxrl_desktop.sharding import (
    TrainState,
    batch_sharding,
    create_train_state,
    make_train_step,
    shard_batch,
)
from jaxrl_desktop.tokenizer import BOS, EOS, PAD, Tokenizer

# Source names are arbitrary labels, picked so that MiniLM cannot tell reliable from unreliable by
# similarity: mean cosine of "what is {key} ?" with "{source} {key} 7 ;" over 60 keys (measured):
# manual 0.682 / guide 0.681 and catalog 0.644 / report 0.642. (Natural choices such as
# manual/handbook vs forum/rumor differ by ~0.13, which would let dense similarity alone sort them.)
RELIABLE: tuple[str, ...] = ("manual", "catalog")
UNRELIABLE: tuple[str, ...] = ("guide", "report")
SOURCES: tuple[str, ...] = RELIABLE + UNRELIABLE
CODES: tuple[str, ...] = tuple("0123456789")
FILLER: tuple[str, ...] = (";", "what", "is", "?")
UNK = "<|unk|>"
_KEY_WORDS = """
    apple anchor badger bakery banjo barrel basket beacon beetle bicycle biscuit blanket bottle
    boulder bracelet bridge bucket buffalo cabbage cactus camera candle canoe canyon carpet carrot
    castle cattle cellar cherry chimney circus clover cobweb compass copper cottage crayon cricket
    cushion dagger daisy desert dolphin donkey dragon drum eagle easel elbow engine falcon feather
    fence ferry fiddle forest fossil fountain garden garlic giraffe glacier goblet goose granite
    guitar hammer harbor harness hazel helmet hermit hockey honey hornet island jacket jaguar jelly
    kettle kitten ladder lantern lemon leopard lizard lobster locket magnet mango marble meadow
    melon mirror mitten monkey mosaic muffin mushroom napkin needle nickel noodle oyster paddle
    palace panther parrot peanut pebble pelican pencil pepper pigeon pillow pirate planet pocket
    pony potato pumpkin puzzle quarry rabbit raccoon radish raven ribbon river rocket saddle
    salmon sandal scarf scooter seashell shovel silver sparrow spider spinach sponge squirrel
    statue stove sugar sunflower swallow teapot temple thimble thistle thunder tiger tomato
    tractor trumpet tulip turnip turtle umbrella valley velvet violin volcano wagon walnut walrus
    weasel whistle willow window wizard wombat yogurt zebra
"""
KEYS: tuple[str, ...] = tuple(_KEY_WORDS.split())


# ------------------------------------------------------------------------------ texts
def demo_text(source: str, key: str, code: str) -> str:
    return f"{source} {key} {code} ;"


def question_text(key: str) -> str:
    return f"what is {key} ?"


def prompt_text(demos: Sequence[str], question: str) -> str:
    """The LLM prompt: demonstrations in the given order, then the question."""
    return " ".join([*demos, question])


def answer_text(code: str) -> str:
    return code


def make_tokenizer() -> Tokenizer:
    """A word-level tokenizer (one token per word) over the task's closed vocabulary."""
    words = [PAD, BOS, EOS, UNK, *SOURCES, *KEYS, *CODES, *FILLER]
    tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([PAD, BOS, EOS, UNK])
    return Tokenizer(tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)


# ------------------------------------------------------------------------------ world
@dataclasses.dataclass(frozen=True)
class Demo:
    source: str
    key: str
    code: str

    @property
    def text(self) -> str:
        return demo_text(self.source, self.key, self.code)

    @property
    def reliable(self) -> bool:
        return self.source in RELIABLE


@dataclasses.dataclass(frozen=True)
class World:
    """Facts, the demonstration pool and a train / held-out split of the questions (by key)."""

    truth: dict[str, str]
    pool: list[Demo]
    train_keys: list[str]
    heldout_keys: list[str]

    @property
    def pool_texts(self) -> list[str]:
        return [d.text for d in self.pool]


def make_world(
    n_keys: int = len(KEYS),
    reliable_per_key: int = 2,
    unreliable_per_key: int = 2,
    heldout_fraction: float = 0.3,
    seed: int = 0,
) -> World:
    """Every key gets ``reliable_per_key`` true and ``unreliable_per_key`` wrong demonstrations."""
    if not 2 <= n_keys <= len(KEYS):
        raise ValueError(f"n_keys must be in [2, {len(KEYS)}]")
    rng = np.random.default_rng(seed)
    keys = list(rng.permutation(KEYS)[:n_keys])
    truth = {k: str(rng.integers(10)) for k in keys}
    pool: list[Demo] = []
    for k in keys:
        for _ in range(reliable_per_key):
            pool.append(Demo(str(rng.choice(RELIABLE)), k, truth[k]))
        wrong = [c for c in CODES if c != truth[k]]
        for _ in range(unreliable_per_key):
            pool.append(Demo(str(rng.choice(UNRELIABLE)), k, str(rng.choice(wrong))))
    pool = [pool[i] for i in rng.permutation(len(pool))]
    n_held = max(1, round(heldout_fraction * n_keys))
    return World(truth, pool, sorted(keys[n_held:]), sorted(keys[:n_held]))


# ------------------------------------------------------------------------- LLM training
def rule_distribution(codes: Sequence[str], decay: float = 0.3) -> np.ndarray:
    """The target rule: p(answer = c) = sum of the recency weights of the demos whose code is c.

    Demo ``i`` of ``k`` (prompt order) has weight ``decay ** (k - 1 - i)``, normalised; with no demo
    the answer is uniform. Returns ``[10]`` probabilities over :data:`CODES`.
    """
    p = np.zeros(len(CODES))
    if not codes:
        return p + 1.0 / len(CODES)
    w = decay ** np.arange(len(codes) - 1, -1, -1, dtype=np.float64)
    for c, wi in zip(codes, w / w.sum(), strict=True):
        p[CODES.index(c)] += wi
    return p


def sample_llm_batch(
    rng: np.random.Generator,
    tokenizer: Tokenizer,
    batch: int,
    max_demos: int = 6,
    decay: float = 0.3,
) -> dict[str, np.ndarray]:
    """Random prompts (random sources, keys and codes) with answers drawn from :func:`rule_distribution`.

    Returns ``tokens``, ``attention_mask`` and ``loss_mask`` (the answer token only), all ``[B, T]``.
    The token sequence equals ``[bos] + encode(prompt_text(demos, question)) + encode(answer)``.
    """
    ids = {w: tokenizer.token_to_id(w) for w in (*SOURCES, *KEYS, *CODES, *FILLER)}
    src_ids = np.array([ids[w] for w in SOURCES])
    key_ids = np.array([ids[w] for w in KEYS])
    code_ids = np.array([ids[w] for w in CODES])
    what, is_, qmark, semi = ids["what"], ids["is"], ids["?"], ids[";"]
    length = 1 + 4 * max_demos + 4 + 1
    tokens = np.full((batch, length), tokenizer.pad_id, np.int32)
    mask = np.zeros((batch, length), bool)
    loss = np.zeros((batch, length), bool)
    ks = rng.integers(1, max_demos + 1, size=batch)
    srcs = rng.integers(len(SOURCES), size=(batch, max_demos))
    keys = rng.integers(len(KEYS), size=(batch, max_demos + 1))
    codes = rng.integers(len(CODES), size=(batch, max_demos))
    w = decay ** np.arange(max_demos - 1, -1, -1, dtype=np.float64)
    for b in range(batch):
        k = int(ks[b])
        p = w[-k:] / w[-k:].sum()
        target = codes[b, int(rng.choice(k, p=p))]
        demo = np.stack([src_ids[srcs[b, :k]], key_ids[keys[b, :k]], code_ids[codes[b, :k]],
                         np.full(k, semi)], axis=1).reshape(-1)
        row = [tokenizer.bos_id, *demo.tolist(), what, is_, int(key_ids[keys[b, -1]]), qmark,
               int(code_ids[target])]
        tokens[b, : len(row)] = row
        mask[b, : len(row)] = True
        loss[b, len(row) - 1] = True
    return {"tokens": tokens, "attention_mask": mask, "loss_mask": loss}


@dataclasses.dataclass
class TrainedLLM:
    """The trained tiny decoder: an NNX model (params on the mesh) and its tokenizer."""

    model: Decoder
    tokenizer: Tokenizer
    config: DecoderConfig
    history: list[float]
    seconds: float


def train_llm(
    mesh: Mesh,
    steps: int = 600,
    batch: int = 64,
    learning_rate: float = 3e-3,
    max_demos: int = 6,
    decay: float = 0.3,
    seed: int = 0,
    progress: bool = False,
    **model_overrides,
) -> TrainedLLM:
    """Train the tiny decoder on :func:`sample_llm_batch` prompts with the shared sharded train step."""
    tok = make_tokenizer()
    cfg = get_config(
        "tiny", vocab_size=-(-tok.vocab_size // 8) * 8, max_seq_len=64, **model_overrides
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(50, steps // 10), steps)
    optimizer = optax.adamw(schedule, weight_decay=0.01)
    graphdef, state, shardings = create_train_state(
        lambda: Decoder(cfg, rngs=nnx.Rngs(seed)), optimizer, mesh
    )
    bs = {name: batch_sharding(mesh) for name in ("tokens", "attention_mask", "loss_mask")}
    step = make_train_step(make_lm_loss(graphdef), optimizer, mesh, shardings, bs)
    rng = np.random.default_rng(seed + 1)
    history: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train tiny LLM", unit="step")
    t0 = time.perf_counter()
    state_: TrainState = state
    for _ in range(steps):
        data = sample_llm_batch(rng, tok, batch, max_demos, decay)
        state_, metrics = step(state_, shard_batch(data, mesh))
        history.append(float(metrics["loss"]))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    if bar is not None:
        bar.close()
    model = nnx.merge(graphdef, state_.params)
    return TrainedLLM(model, tok, cfg, history, time.perf_counter() - t0)


def rule_fidelity(llm: TrainedLLM, n: int = 256, max_demos: int = 6, decay: float = 0.3, seed: int = 123) -> dict[str, float]:
    """How closely the trained decoder follows :func:`rule_distribution` on fresh random prompts:
    mean KL(rule || model) over the ten codes, and how often both put the most mass on the same code."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    tok = llm.tokenizer
    rows, targets = [], []
    for _ in range(n):
        k = int(rng.integers(1, max_demos + 1))
        codes = [str(c) for c in rng.integers(10, size=k)]
        demos = [demo_text(str(rng.choice(SOURCES)), str(rng.choice(KEYS)), c) for c in codes]
        rows.append([tok.bos_id, *tok.encode(prompt_text(demos, question_text(str(rng.choice(KEYS)))))])
        targets.append(rule_distribution(codes, decay))
    length = max(map(len, rows))
    tokens = np.full((n, length), tok.pad_id, np.int32)
    mask = np.zeros((n, length), bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], mask[i, : len(r)] = r, True
    logits = llm.model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    last = np.array([len(r) - 1 for r in rows])
    code_ids = [tok.token_to_id(c) for c in CODES]
    q = np.asarray(jax.nn.softmax(np.asarray(logits)[np.arange(n), last][:, code_ids], axis=-1))
    p = np.asarray(targets)
    kl = np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), 0.0), axis=1)
    return {"kl": float(kl.mean()), "argmax_agreement": float(np.mean(p.argmax(1) == q.argmax(1)))}
