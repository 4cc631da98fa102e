"""Colored Objects (BIG-bench; Merullo et al. 2024, "Circuit Component Reuse"): one-shot colour questions.

"Q: On the table, there is a red car, a blue book, and a green cup. What color is the book?\nA: Blue\n\nQ: ...
What color is the cup?\nA:" -> " Green". Three objects with three distinct colours per question; the answer is
the capitalised colour. Corruption is "mindiff": the same prompt asking about another object of the same list,
so the answer colour changes; the wrong answer is that colour. `options` are the question's three colours.
Held-out split: a stable hash of a question's (colour, object) set puts about 1 in 5 sets in "test" only (the
demonstration question is drawn from the same split). Options: `answer_case="lower"` answers with the colour
word as listed ("blue": the answer token is in the prompt; a training curriculum for small models), and
`n_objects` lists more objects in the asked question (the demonstration keeps three), a harder variant.
Key positions: `query_object`, `answer_color`, `answer_object`, `wrong_color` (the corrupt prompt's answer) and
`other_color_<k>` (every listed colour but the answer, in list order).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Any

from interp.tasks.encode import (
    Pair,
    Sample,
    Span,
    check_choice,
    check_split,
    in_split,
    render,
    single_tokens,
)
from interp.tasks.words import CO_OBJECTS, CO_QUESTION, CO_SURFACES, CO_VIEWS, COLOR_LABELS, COLORS

N_OBJECTS = 3  # objects per question in the paper (and in the demonstration question, always)
ANSWER_CASES: tuple[str, ...] = ("title", "lower")


def question_template(n_objects: int = N_OBJECTS) -> str:
    """The question with `n_objects` slots ("a {C0} {O0}, a {C1} {O1}, and a {C2} {O2}" for three)."""
    items = [f"a {{C{i}}} {{O{i}}}" for i in range(n_objects)]
    listing = ", ".join(items[:-1]) + ", and " + items[-1]
    return "Q: On the {SURFACE}, {VIEW} " + listing + ". What color is the {OQ}?\nA:"


assert question_template() == CO_QUESTION


def _template(n_objects: int) -> str:
    # the demonstration question's slots are prefixed with "D" ({DC0}, {DOQ}, ...)
    return re.sub(r"\{(\w+)\}", r"{D\1}", CO_QUESTION) + " {DANSWER}\n\n" + question_template(n_objects)


def _check(answer_case: str, n_objects: int) -> None:
    check_choice("answer_case", answer_case, ANSWER_CASES)
    if isinstance(n_objects, bool) or not isinstance(n_objects, int) or not 2 <= n_objects <= len(COLORS):
        raise ValueError(
            f"n_objects must be an int in [2, {len(COLORS)}] (distinct colours), got {n_objects!r}"
        )


@dataclass(frozen=True, kw_only=True)
class Pools:
    """The colours and objects Colored Objects draws from (answers, options and queried words: one token each)."""

    colors: tuple[str, ...] = COLORS
    objects: tuple[str, ...] = CO_OBJECTS


def label(color: str, answer_case: str = "title") -> str:
    """The answer form of a colour: capitalised ("blue" -> "Blue"), or the colour word itself ("lower")."""
    return COLOR_LABELS[COLORS.index(color)] if answer_case == "title" else color


def pools(
    tokenizer: Any, *, split: str = "test", answer_case: str = "title", n_objects: int = N_OBJECTS
) -> Pools:
    """The colours (lower case and capitalised) and objects that are single tokens of `tokenizer`."""
    check_split(split)
    _check(answer_case, n_objects)
    need = max(n_objects, N_OBJECTS)
    why = f"{need} distinct ones per question"
    lower = single_tokens(tokenizer, "colours", COLORS, need=need, why=why)
    labels = single_tokens(tokenizer, "colour answers", [label(c) for c in lower], need=need, why=why)
    colors = tuple(c for c in lower if label(c) in labels)
    return Pools(colors=colors, objects=single_tokens(tokenizer, "objects", CO_OBJECTS, need=need, why=why))


def _question(
    rng: random.Random, split: str, prefix: str = "", pools: Pools = Pools(), n_objects: int = N_OBJECTS
) -> tuple[dict[str, str], list[str], int]:
    while True:
        objects, colors = rng.sample(pools.objects, n_objects), rng.sample(pools.colors, n_objects)
        contents = sorted(f"{c} {o}" for c, o in zip(colors, objects, strict=True))
        if in_split("co:" + ",".join(contents), split):
            break
    q = rng.randrange(n_objects)
    values = {"SURFACE": rng.choice(CO_SURFACES), "VIEW": rng.choice(CO_VIEWS), "OQ": objects[q]}
    values |= {f"C{i}": c for i, c in enumerate(colors)} | {f"O{i}": o for i, o in enumerate(objects)}
    return {prefix + k: v for k, v in values.items()}, colors, q


def _draw(
    rng: random.Random,
    split: str,
    pools: Pools = Pools(),
    answer_case: str = "title",
    n_objects: int = N_OBJECTS,
) -> tuple[Sample, dict[str, str], dict[str, list[Span]]]:
    check_split(split)
    _check(answer_case, n_objects)
    demo, demo_colors, demo_q = _question(rng, split, prefix="D", pools=pools)
    values, colors, q = _question(rng, split, pools=pools, n_objects=n_objects)
    values |= demo | {"DANSWER": label(demo_colors[demo_q], answer_case)}
    text, spans = render(_template(n_objects), values)
    key_spans = {
        "query_object": spans["OQ"][0],
        "answer_color": spans[f"C{q}"][0],
        "answer_object": spans[f"O{q}"][0],
    }
    # every listed colour but the answer, in list order: the distractors Merullo et al.'s inhibition heads attend to
    others = [i for i in range(n_objects) if i != q]
    key_spans |= {f"other_color_{k}": spans[f"C{i}"][0] for k, i in enumerate(others)}
    meta = {"colors": colors, "objects": [values[f"O{i}"] for i in range(n_objects)], "query_index": q}
    return (
        Sample(prompt=text, answer=label(colors[q], answer_case), spans=key_spans, meta=meta),
        values,
        spans,
    )


def sample(
    rng: random.Random, *, split: str = "train", answer_case: str = "title", n_objects: int = N_OBJECTS
) -> Sample:
    """One one-shot Colored Objects prompt (training text: `sample(...).text`)."""
    return _draw(rng, split, answer_case=answer_case, n_objects=n_objects)[0]


def draw(
    rng: random.Random,
    pools: Pools = Pools(),
    *,
    split: str = "test",
    answer_case: str = "title",
    n_objects: int = N_OBJECTS,
) -> list[Pair]:
    """A prompt and its mindiff corruption (another object of the same list is queried); words from `pools`."""
    clean, values, spans = _draw(rng, split, pools, answer_case, n_objects)
    colors = clean.meta["colors"]
    j = rng.choice([i for i in range(n_objects) if i != clean.meta["query_index"]])
    corrupt, _ = render(_template(n_objects), values | {"OQ": values[f"O{j}"]})
    clean = replace(
        clean, spans=clean.spans | {"wrong_color": spans[f"C{j}"][0]}, meta=clean.meta | {"corrupt_index": j}
    )
    return [
        Pair(
            clean=clean,
            corrupt_prompt=corrupt,
            wrong=label(colors[j], answer_case),
            options=tuple(label(c, answer_case) for c in colors),
        )
    ]
