"""Zero-/k-shot prompts and answer candidates for multiple-choice log-likelihood scoring.

A prompt is a header, ``k`` solved demonstrations and the question, ending in ``Answer:`` (``答案：``
for Chinese questions). Each answer *candidate* is a continuation scored as log p(continuation |
prompt). Candidates are the option texts (``answer_format="text"``, where length normalisation
matters) or the option letters (``"letter"``, MMLU style). Multi-answer questions either score each
option and predict the top-|gold| options (``multi="topk"``), or score every option set of the gold
size as one continuation (``multi="sets"``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

from eval.mcq_data import LETTERS, MCQItem

ANSWER_FORMATS = ("text", "letter")
MULTI_MODES = ("topk", "sets")


@dataclasses.dataclass(frozen=True)
class Template:
    header: str
    question: str
    answer: str
    delimiter: str  # between "Answer:" and the continuation
    joiner: str  # between several answers of a multi-answer question


TEMPLATES: dict[str, Template] = {
    "en": Template(
        header="The following are multiple choice questions (with answers) about network operations.\n\n",
        question="Question: ", answer="Answer:", delimiter=" ", joiner="; ",
    ),
    "zh": Template(
        header="以下是关于网络运维的选择题（附答案）。\n\n", question="问题：", answer="答案：", delimiter="", joiner="；",
    ),
}


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    answer_format: str = "text"
    multi: str = "topk"
    max_sets: int = 64  # above this many option sets, "sets" falls back to "topk" for that question

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if self.multi not in MULTI_MODES:
            raise ValueError(f"multi must be one of {MULTI_MODES}, got {self.multi!r}")


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Continuations to score for one question. ``sets[i]`` = option indices that candidate ``i`` claims;
    the prediction is the union of the ``pick`` best candidates' sets (``pick`` = |gold| in topk mode)."""

    texts: tuple[str, ...]
    sets: tuple[tuple[int, ...], ...]
    pick: int  # how many top candidates form the prediction (1, or |gold| in topk mode)


def template_for(item: MCQItem) -> Template:
    return TEMPLATES.get(item.language, TEMPLATES["en"])


def _answer_text(item: MCQItem, indices: Sequence[int], cfg: PromptConfig, tpl: Template) -> str:
    if cfg.answer_format == "letter":
        return ",".join(LETTERS[i] for i in indices)
    return tpl.joiner.join(item.options[i] for i in indices)


def format_question(item: MCQItem, tpl: Template) -> str:
    lines = [tpl.question + item.question]
    lines += [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(item.options)]
    return "\n".join(lines) + "\n" + tpl.answer


def format_demo(item: MCQItem, cfg: PromptConfig, tpl: Template) -> str:
    return format_question(item, tpl) + tpl.delimiter + _answer_text(item, item.answers, cfg, tpl) + "\n\n"


def build_prompt(item: MCQItem, demos: Sequence[MCQItem] = (), cfg: PromptConfig = PromptConfig()) -> str:
    """Header + solved ``demos`` (in the given order) + the question, ending right before the answer."""
    tpl = template_for(item)
    return tpl.header + "".join(format_demo(d, cfg, tpl) for d in demos) + format_question(item, tpl)


def candidates(item: MCQItem, cfg: PromptConfig = PromptConfig()) -> Candidates:
    """The continuations to score for ``item`` (each without the leading delimiter)."""
    tpl = template_for(item)
    n, k = len(item.options), len(item.answers)
    if k > 1 and cfg.multi == "sets" and math.comb(n, k) <= cfg.max_sets:
        sets = tuple(itertools.combinations(range(n), k))
        return Candidates(tuple(_answer_text(item, s, cfg, tpl) for s in sets), sets, pick=1)
    sets = tuple((i,) for i in range(n))
    return Candidates(tuple(_answer_text(item, s, cfg, tpl) for s in sets), sets, pick=k)


def delimiter(item: MCQItem) -> str:
    return template_for(item).delimiter
