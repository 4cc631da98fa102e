"""Context vs prior: the CCS task of Minder et al. 2025 ("Controllable Context Sensitivity and the Knob").

A context states a counterfactual ("Paris is in Chile."), the query asks for the fact ("Where is Paris?"), and
the intent says whether to answer from the context (" Chile") or from prior knowledge (" France"). Formats:
"instruction" (an instruction sentence), "weight" ("Context weight: 1.00 | 0.00") and "none" (no intent given;
both intents then share one prompt). Each (context, query) appears under both intents: the two prompts share
`metadata["pair_id"]`, and each is the other's corrupt prompt (the wrong answer is the other intent's answer).
Held-out split: a stable hash of the entity puts about 1 in 5 entities in "test" only; every entity's prior
fact is training text (`fact_sentences`), as a model must know the prior to answer from it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from interp.tasks.encode import (
    Pair,
    Sample,
    Span,
    check_choice,
    check_split,
    encode,
    in_split,
    render,
    single_tokens,
)
from interp.tasks.words import (
    CCS_CONTEXTS,
    CCS_FORMATS,
    CCS_INSTRUCTIONS,
    CCS_QUERIES,
    CCS_WEIGHTS,
    COUNTRIES,
    FACT_SENTENCE,
    FACTS,
    WORD_RE,
    Fact,
)

FORMATS: tuple[str, ...] = tuple(CCS_FORMATS)
INTENTS: tuple[str, ...] = ("context", "prior")
N_TEMPLATES = len(CCS_CONTEXTS) * len(CCS_QUERIES)  # template t = (context t // 3, query t % 3)


def fact_sentences() -> list[str]:
    """Every prior fact as a sentence ("Paris is in France."), for the pretraining corpus."""
    return [FACT_SENTENCE.format(E=f.entity, X=f.attribute) for f in FACTS]


def facts(split: str, pool: Sequence[Fact] = FACTS) -> list[Fact]:
    """The facts (of `pool`) whose entity belongs to `split`."""
    check_split(split)
    return [f for f in pool if in_split(f"ccs:{f.entity}", split)]


@dataclass(frozen=True, kw_only=True)
class Pools:
    """The facts, counterfactual countries and instruction pairs (indices of CCS_INSTRUCTIONS) drawn from."""

    facts: tuple[Fact, ...] = FACTS
    countries: tuple[str, ...] = COUNTRIES
    instructions: tuple[int, ...] = tuple(range(len(CCS_INSTRUCTIONS)))


@dataclass(frozen=True, kw_only=True)
class _Question:
    fact: Fact
    counterfactual: str
    template: int
    instruction: int


def _question(rng: random.Random, split: str, template: int | None, pools: Pools = Pools()) -> _Question:
    fact = rng.choice(facts(split, pools.facts))
    return _Question(
        fact=fact,
        counterfactual=rng.choice([c for c in pools.countries if c != fact.attribute]),
        template=rng.randrange(N_TEMPLATES) if template is None else template,
        instruction=rng.choice(pools.instructions),  # = rng.randrange(len(CCS_INSTRUCTIONS)) for every pair
    )


def _intent_text(fmt: str, q: _Question) -> tuple[str, str] | None:
    if fmt == "instruction":
        return CCS_INSTRUCTIONS[q.instruction]
    return CCS_WEIGHTS if fmt == "weight" else None


def _differing_word(a: str, b: str) -> Span:
    """The span (in `a`) of the first word where `a` and `b` differ."""
    at = next(i for i, (x, y) in enumerate(zip(a + "\0", b + "\1", strict=False)) if x != y)
    return next((m.start(), m.end()) for m in WORD_RE.finditer(a) if m.end() > at)


def _render(fmt: str, q: _Question, intent: str) -> Sample:
    n_queries = len(CCS_QUERIES)
    tpl = (
        CCS_FORMATS[fmt]
        .replace("{CONTEXT}", CCS_CONTEXTS[q.template // n_queries])
        .replace("{QUERY}", CCS_QUERIES[q.template % n_queries])
    )
    values = {"E": q.fact.entity, "X": q.counterfactual}
    intents = _intent_text(fmt, q)
    k = INTENTS.index(intent)
    if intents is not None:
        values["INTENT"] = intents[k]
    text, spans = render(tpl, values)
    key_spans = {
        "context_entity": spans["E"][0],
        "context_attribute": spans["X"][0],
        "query_entity": spans["E"][1],
    }
    if intents is not None:
        s, e = _differing_word(intents[k], intents[1 - k])
        start = spans["INTENT"][0][0]
        key_spans["intent"] = (start + s, start + e)
    meta = {
        "intent": intent,
        "format": fmt,
        "entity": q.fact.entity,
        "prior": q.fact.attribute,
        "context": q.counterfactual,
        "template": q.template,
    }
    if fmt == "instruction":
        meta["instruction"] = q.instruction
    answer = q.counterfactual if intent == "context" else q.fact.attribute
    return Sample(prompt=text, answer=answer, spans=key_spans, meta=meta)


def _check(split: str, format: str, template: int | None) -> None:
    check_split(split)
    check_choice("format", format, FORMATS)
    if template is not None:
        check_choice("template", template, range(N_TEMPLATES))


def pools(
    tokenizer: Any, *, split: str = "test", format: str = "instruction", template: int | None = None
) -> Pools:
    """The facts and countries that are single tokens of `tokenizer`, and the intent texts that align in it.

    Entities and countries are named positions and answers, so each must be one token. Clean and corrupt
    prompts differ only in the intent, so an intent pair whose two texts tokenise to different lengths is
    dropped; when none aligns, alignment is impossible and this raises naming the texts.
    """
    _check(split, format, template)
    countries = single_tokens(
        tokenizer, "countries", COUNTRIES, need=2, why="a prior and a counterfactual country"
    )
    entities = set(single_tokens(tokenizer, "cities", [f.entity for f in FACTS], need=1, why="an entity"))
    pool = tuple(f for f in FACTS if f.entity in entities and f.attribute in countries)
    if not facts(split, pool):
        raise ValueError(
            f"no fact of split {split!r} has a single-token city and country with this tokenizer "
            f"({len(pool)} of {len(FACTS)} facts have both)"
        )
    fact = pool[0]
    other = next(c for c in countries if c != fact.attribute)
    aligned, lengths = [], {}
    for i in range(len(CCS_INSTRUCTIONS)) if format == "instruction" else (0,):
        q = _Question(fact=fact, counterfactual=other, template=template or 0, instruction=i)
        texts = [_render(format, q, intent).prompt for intent in INTENTS]
        lengths[i] = [len(encode(tokenizer, t)[0]) for t in texts]
        if lengths[i][0] == lengths[i][1]:
            aligned.append(i)
    if not aligned:
        pairs = CCS_INSTRUCTIONS if format == "instruction" else [CCS_WEIGHTS]
        shown = "; ".join(f"{a!r} vs {b!r}: {lengths[i]} tokens" for i, (a, b) in enumerate(pairs))
        raise ValueError(
            f"clean and corrupt context_prior prompts cannot align with this tokenizer: the {format} intents "
            f"tokenise to different lengths ({shown})"
        )
    return Pools(facts=pool, countries=countries, instructions=tuple(aligned))


def sample(
    rng: random.Random,
    *,
    split: str = "train",
    format: str = "instruction",
    intent: str | None = None,
    template: int | None = None,
) -> Sample:
    """One CCS prompt under `intent` (random if None); training text: `sample(...).text`."""
    _check(split, format, template)
    if intent is not None:
        check_choice("intent", intent, INTENTS)
    q = _question(rng, split, template)
    return _render(format, q, rng.choice(INTENTS) if intent is None else intent)


def draw(
    rng: random.Random,
    pools: Pools = Pools(),
    *,
    split: str = "test",
    format: str = "instruction",
    template: int | None = None,
) -> list[Pair]:
    """One (context, query) under both intents; each prompt's corrupt prompt is the other intent's prompt."""
    _check(split, format, template)
    q = _question(rng, split, template, pools)
    ctx, pri = (_render(format, q, intent) for intent in INTENTS)
    return [
        Pair(clean=ctx, corrupt_prompt=pri.prompt, wrong=pri.answer),
        Pair(clean=pri, corrupt_prompt=ctx.prompt, wrong=ctx.answer),
    ]
