"""Entity tracking (Kim & Schuster 2023; Prakash et al. 2024, "Fine-Tuning Enhances Existing Mechanisms").

"The apple is in Box F, the car is in Box Q, the book is in Box K. Box Q contains the" -> " car".
Key positions: `query_label` (the queried label, last-2 with word tokenizers), `prev_query_label` (its one
earlier occurrence), `answer_object`, `END`. The corrupt prompt is Prakash et al.'s path-patching
counterfactual: a different example whose queried segment index differs, with its query label replaced by a
label absent from it; the wrong answer is the clean prompt's object at that other segment index.
Held-out split: a stable hash of the (object, label) association set puts about 1 in 5 sets in "test" only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from interp.tasks.encode import (
    Pair,
    Sample,
    build_prompt_set,
    check_choice,
    check_count,
    check_seed,
    check_split,
    in_split,
    render,
    single_tokens,
)
from interp.tasks.promptset import BatchIds, PromptSet
from interp.tasks.words import BOX_LABELS, ET_FIRST_SEGMENT, ET_OBJECTS, ET_QUERY, ET_SEGMENT

DESIDERATA: tuple[str, ...] = ("positional", "object_value", "box_label_value")
# one label must stay free (counterfactuals); DCM sources use objects absent from their base
MAX_BOXES = min(len(BOX_LABELS) - 1, len(ET_OBJECTS) // 2)


@dataclass(frozen=True, kw_only=True)
class Boxes:
    """One example's contents: `objects[i]` is in box `labels[i]`; `query` is the queried segment index."""

    objects: tuple[str, ...]
    labels: tuple[str, ...]
    query: int

    def key(self) -> str:
        return "et:" + ",".join(sorted(f"{o}@{b}" for o, b in zip(self.objects, self.labels, strict=True)))


@dataclass(frozen=True, kw_only=True)
class Pools:
    """The objects and box labels entity tracking draws from (answers and swapped words: one token each)."""

    objects: tuple[str, ...] = ET_OBJECTS
    labels: tuple[str, ...] = BOX_LABELS


def _check(split: str, n_boxes: int) -> None:
    check_split(split)
    if isinstance(n_boxes, bool) or not isinstance(n_boxes, int) or not 2 <= n_boxes <= MAX_BOXES:
        raise ValueError(f"n_boxes must be an int in [2, {MAX_BOXES}], got {n_boxes!r}")


def pools(tokenizer: Any, *, split: str = "test", n_boxes: int = 3, for_desiderata: bool = False) -> Pools:
    """The objects and labels that are single tokens of `tokenizer`, enough for `n_boxes` boxes.

    A prompt needs `n_boxes` objects and `n_boxes` labels plus one absent label (the counterfactual query);
    DCM desiderata (`for_desiderata=True`) need `2 * n_boxes` objects (sources use objects absent from the base).
    """
    _check(split, n_boxes)
    n_objects = 2 * n_boxes if for_desiderata else n_boxes
    why = f"{n_boxes} boxes" + (" and a source of other objects" if for_desiderata else "")
    return Pools(
        objects=single_tokens(tokenizer, "entity-tracking objects", ET_OBJECTS, need=n_objects, why=why),
        labels=single_tokens(
            tokenizer, "box labels", BOX_LABELS, need=n_boxes + 1, why=why + " and a free label"
        ),
    )


def _boxes(
    rng: random.Random, n_boxes: int, split: str, exclude: Sequence[str] = (), pools: Pools = Pools()
) -> Boxes:
    pool = [o for o in pools.objects if o not in exclude]
    while True:
        boxes = Boxes(
            objects=tuple(rng.sample(pool, n_boxes)),
            labels=tuple(rng.sample(pools.labels, n_boxes)),
            query=rng.randrange(n_boxes),
        )
        if in_split(boxes.key(), split):
            return boxes


def _render(boxes: Boxes, query_label: str | None = None) -> tuple[str, dict[str, tuple[int, int]]]:
    """The prompt text and key spans; `query_label` overrides the queried label (counterfactuals)."""
    segments = [ET_FIRST_SEGMENT, *[ET_SEGMENT] * (len(boxes.objects) - 1)]
    tpl = ", ".join(s.replace("{O}", f"{{O{i}}}").replace("{L}", f"{{L{i}}}") for i, s in enumerate(segments))
    tpl += ". " + ET_QUERY
    q_label = boxes.labels[boxes.query] if query_label is None else query_label
    values = {"Q": q_label} | {f"O{i}": o for i, o in enumerate(boxes.objects)}
    values |= {f"L{i}": b for i, b in enumerate(boxes.labels)}
    text, spans = render(tpl, values)
    key_spans = {"query_label": spans["Q"][0]}
    if q_label in boxes.labels:
        i = boxes.labels.index(q_label)
        key_spans |= {"prev_query_label": spans[f"L{i}"][0], "answer_object": spans[f"O{i}"][0]}
    return text, key_spans


def _sample(boxes: Boxes, **meta: Any) -> Sample:
    text, spans = _render(boxes)
    meta = {"objects": boxes.objects, "labels": boxes.labels, "query_index": boxes.query, **meta}
    return Sample(prompt=text, answer=boxes.objects[boxes.query], spans=spans, meta=meta)


def sample(rng: random.Random, *, split: str = "train", n_boxes: int = 3) -> Sample:
    """One entity-tracking prompt (training text: `sample(...).text`)."""
    _check(split, n_boxes)
    return _sample(_boxes(rng, n_boxes, split))


def draw(rng: random.Random, pools: Pools = Pools(), *, split: str = "test", n_boxes: int = 3) -> list[Pair]:
    """A prompt and its path-patching counterfactual (another example, query label absent from it)."""
    _check(split, n_boxes)
    clean = _sample(_boxes(rng, n_boxes, split, pools=pools))
    q = clean.meta["query_index"]
    other = _boxes(rng, n_boxes, split, pools=pools)
    other = replace(other, query=rng.choice([i for i in range(n_boxes) if i != q]))
    absent = rng.choice([b for b in pools.labels if b not in other.labels])
    corrupt, _ = _render(other, query_label=absent)
    clean = replace(clean, meta=clean.meta | {"corrupt_index": other.query})
    return [Pair(clean=clean, corrupt_prompt=corrupt, wrong=clean.meta["objects"][other.query])]


def _desideratum(
    rng: random.Random, kind: str, n_boxes: int, split: str, pools: Pools
) -> tuple[Boxes, Boxes, str]:
    """(base, source, target word) for one DCM pair; the source's objects never occur in the base."""
    base = _boxes(rng, n_boxes, split, pools=pools)
    while True:
        source = _boxes(rng, n_boxes, split, exclude=base.objects, pools=pools)
        others = [i for i in range(n_boxes) if i != base.query]
        if kind == "box_label_value":
            j = rng.choice(others)  # the source queries the base's label j, at another segment index
            qs = rng.choice([i for i in range(n_boxes) if i != j])
            rest = iter(rng.sample([b for b in pools.labels if b != base.labels[j]], n_boxes - 1))
            labels = tuple(base.labels[j] if i == qs else next(rest) for i in range(n_boxes))
            source, target = replace(source, labels=labels, query=qs), base.objects[j]
        else:
            source = replace(source, query=rng.choice(others))
            target = (base.objects if kind == "positional" else source.objects)[source.query]
        if in_split(source.key(), split):
            return base, source, target


def desiderata(
    tokenizer: Any, kind: str, n: int, seed: int, *, n_boxes: int = 3, split: str = "test"
) -> tuple[PromptSet, PromptSet, BatchIds]:
    """DCM desideratum pairs (Prakash et al. 2024): (base set, source set, target token ids).

    Patching a head group's activations from the source prompt into the base prompt should make the model
    output the target: "positional" -> the base object at the source's query index; "object_value" -> the
    source's queried object; "box_label_value" -> the base object in the box the source queries. The base
    set's corrupt prompts are the sources and its wrong answers the targets; the source set's corrupt prompts
    are the bases and its wrong answers the base answers.
    """
    check_choice("desideratum kind", kind, DESIDERATA)
    check_count("n", n)
    check_seed(seed)
    found = pools(tokenizer, split=split, n_boxes=n_boxes, for_desiderata=True)
    rng = random.Random(seed)
    triples = [_desideratum(rng, kind, n_boxes, split, found) for _ in range(n)]
    base_pairs, source_pairs = [], []
    for base, source, target in triples:
        b, s = (_sample(boxes, desideratum=kind, target=target) for boxes in (base, source))
        base_pairs.append([Pair(clean=b, corrupt_prompt=s.prompt, wrong=target)])
        source_pairs.append([Pair(clean=s, corrupt_prompt=b.prompt, wrong=b.answer)])
    name = f"entity_tracking/{kind}"
    base_set = build_prompt_set(name, tokenizer, iter(base_pairs), n=n)
    source_set = build_prompt_set(name, tokenizer, iter(source_pairs), n=n)
    return base_set, source_set, base_set.wrong_ids.clone()
