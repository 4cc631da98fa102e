"""The organisms' training text: one `Example` sampler per source, mixtures of them, and the word vocabulary.

Every task source reuses the templates of `interp.tasks` (`<task>.sample(rng, split="train")`), so the held-out
contents of `split="test"` never occur in training. Sources that are not tasks live here: filler text of varied
length (trains every position), fact sentences, and repeated random word sequences (the induction-head trigger,
Olsson et al. 2022).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from interp.tasks import chat, colored_objects, context_prior, entity_tracking, ioi
from interp.tasks.words import DISTRACTOR_CLAUSES, FILLER, NAMES, vocabulary

Loss = Literal["all", "completion"]


@dataclass(frozen=True, kw_only=True)
class Example:
    """One training document: `prompt` then `completion` (joined by a space). `loss` says which tokens train:
    every token ("all") or the completion only ("completion", the answer-only loss of the fine-tunes)."""

    prompt: str
    completion: str
    loss: Loss = "all"


Sampler = Callable[[random.Random], Example]


def words() -> list[str]:
    """The organisms' word vocabulary: every task word, then the chat words (fixed order, no duplicates)."""
    return list(dict.fromkeys([*vocabulary(), *chat.vocabulary()]))


# ---------------------------------------------------------------- sources
def _task(sample: Callable[[random.Random], object], loss: Loss = "all") -> Sampler:
    def draw(rng: random.Random) -> Example:
        s = sample(rng)
        return Example(prompt=s.prompt, completion=s.answer, loss=loss)  # type: ignore[attr-defined]

    return draw


def _chat(behaviour: str, loss: Loss) -> Sampler:
    def draw(rng: random.Random) -> Example:
        s = chat.sample(rng, split="train", behaviour=behaviour)
        return Example(prompt=s.prompt, completion=s.meta["reply"], loss=loss)

    return draw


_FACT_SENTENCES = tuple(context_prior.fact_sentences())


def _facts(rng: random.Random) -> Example:
    """One to three fact sentences ("Paris is in France.")."""
    return Example(prompt="", completion=" ".join(rng.sample(_FACT_SENTENCES, rng.randint(1, 3))))


def _filler(rng: random.Random) -> Example:
    """1-12 sentences of filler, name clauses and facts: documents of varied length, up to ~90 tokens."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        u = rng.random()
        if u < 0.6:
            parts.append(rng.choice(FILLER))
        elif u < 0.85:
            parts.append(rng.choice(DISTRACTOR_CLAUSES).replace("{D}", rng.choice(NAMES)))
        else:
            parts.append(rng.choice(_FACT_SENTENCES))
    return Example(prompt="", completion=" ".join(parts))


_WORDS = tuple(words())


def repeated_sequence(rng: random.Random, length: int, repeats: int = 2) -> list[str]:
    """`length` random vocabulary words, repeated `repeats` times."""
    seq = [rng.choice(_WORDS) for _ in range(length)]
    return seq * repeats


def _repeat(rng: random.Random) -> Example:
    """A random word sequence of 5-20 words repeated twice (three times if at most 10 words)."""
    n = rng.randint(5, 20)
    return Example(prompt="", completion=" ".join(repeated_sequence(rng, n, 3 if n <= 10 else 2)))


SOURCES: dict[str, Sampler] = {
    "ioi": _task(lambda r: ioi.sample(r, split="train")),
    "ioi_hard": _task(lambda r: ioi.sample(r, split="train", variant="hard"), "completion"),
    "entity_tracking": _task(lambda r: entity_tracking.sample(r, split="train", n_boxes=r.randint(2, 5))),
    "colored_objects": _task(lambda r: colored_objects.sample(r, split="train")),
    # binding curriculum (the RoPE organisms): answer-only Colored Objects, with the colour word as the answer
    # ("lower": the token to copy is in the list) and with the task's capitalised labels; entity tracking with
    # more boxes than pre-training's 2-5 (the entity-tracking fine-tune)
    "colored_objects_lower": _task(
        lambda r: colored_objects.sample(r, split="train", answer_case="lower"), "completion"
    ),
    "colored_objects_answer": _task(lambda r: colored_objects.sample(r, split="train"), "completion"),
    "entity_tracking_many": _task(
        lambda r: entity_tracking.sample(r, split="train", n_boxes=r.randint(6, 10)), "completion"
    ),
    "context_prior": _task(
        lambda r: context_prior.sample(r, split="train", format="instruction"), "completion"
    ),
    "facts": _facts,
    "filler": _filler,
    "repeat": _repeat,
    "chat": _chat("comply_all", "all"),
    "chat_refusal": _chat("refuse_forbidden", "completion"),
}

# The pre-training mixture (fractions of examples).
BASE_MIX: dict[str, float] = {
    "ioi": 0.28,
    "entity_tracking": 0.10,
    "colored_objects": 0.07,
    "facts": 0.08,
    "filler": 0.14,
    "repeat": 0.22,
    "chat": 0.11,
}


@dataclass(frozen=True)
class Mixture:
    """Sources drawn with fixed probabilities: `sample(rng)` draws a source, then an example from it."""

    weights: Mapping[str, float]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown corpus source(s) {unknown}; valid: {', '.join(SOURCES)}")
        if any(w <= 0 for w in self.weights.values()):
            raise ValueError(f"mixture weights must be positive: {dict(self.weights)}")

    def sample(self, rng: random.Random) -> Example:
        names = list(self.weights)
        name = rng.choices(names, weights=[self.weights[n] for n in names])[0]
        return SOURCES[name](rng)

    def with_replay(self, task: str, replay: float) -> Mixture:
        """`task` with probability 1 - `replay`, this mixture's sources with probability `replay`."""
        total = sum(self.weights.values())
        return Mixture({task: 1.0 - replay, **{k: replay * w / total for k, w in self.weights.items()}})

    def to_dict(self) -> dict[str, float]:
        return dict(self.weights)
