"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild"): p_IOI and p_ABC.

"When Mary and John went to the store, John gave a drink to" -> " Mary". Orders ABBA (IO first) and BABA (S
first); the corrupt prompt is the same template with three other names (p_ABC: IO -> X, S1 -> Y, S2 -> Z).
Held-out split: a stable hash of the unordered (IO, S) name pair puts about 1 in 5 pairs in "test" only.
The "hard" variant puts 2-3 name-free filler sentences first and a clause mentioning IO or S again before S2
("..., Mary was tired. John gave a drink to"), which defeats the "name that occurs once" shortcut.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace
from typing import Any

from interp.tasks.encode import Pair, Sample, check_choice, check_split, in_split, render, single_tokens
from interp.tasks.words import DISTRACTOR_CLAUSES, FILLER, IOI_OBJECTS, IOI_TEMPLATES, NAMES, PLACES

VARIANTS: tuple[str, ...] = ("normal", "hard")
ORDERS: tuple[str, ...] = ("mixed", "ABBA", "BABA")


def pair_key(io: str, s: str) -> str:
    """The split key of a prompt: its unordered name pair."""
    return "ioi:" + "|".join(sorted((io, s)))


@dataclass(frozen=True, kw_only=True)
class Pools:
    """The names IOI draws from (IO, S and the corrupt names are swapped, so each must be one token)."""

    names: tuple[str, ...] = NAMES


def _check(split: str, variant: str, template: int | None, order: str) -> None:
    check_split(split)
    check_choice("variant", variant, VARIANTS)
    check_choice("order", order, ORDERS)
    if template is not None:
        check_choice("template", template, range(len(IOI_TEMPLATES)))


def pools(
    tokenizer: Any,
    *,
    split: str = "test",
    variant: str = "normal",
    template: int | None = None,
    order: str = "mixed",
) -> Pools:
    """The names that are single tokens of `tokenizer` (raises when too few remain for p_IOI and p_ABC)."""
    _check(split, variant, template, order)
    names = single_tokens(tokenizer, "IOI names", NAMES, need=5, why="IO, S and three corrupt names")
    if not any(in_split(pair_key(a, b), split) for a, b in itertools.combinations(names, 2)):
        raise ValueError(f"no pair of the {len(names)} single-token IOI names belongs to split {split!r}")
    return Pools(names=names)


def _draw(
    rng: random.Random, split: str, variant: str, template: int | None, order: str, pools: Pools = Pools()
) -> tuple[Sample, str, dict[str, str]]:
    _check(split, variant, template, order)
    tid = rng.randrange(len(IOI_TEMPLATES)) if template is None else template
    tpl = IOI_TEMPLATES[tid]
    meta: dict = {"template": tid, "variant": variant}
    if variant == "hard":
        filler = rng.sample(FILLER, rng.randint(2, 3))
        tpl = " ".join(filler) + " " + tpl.replace("{S}", rng.choice(DISTRACTOR_CLAUSES) + " {S}")
        meta |= {"n_filler": len(filler), "distractor": rng.choice(("IO", "S"))}
    while True:
        io, s = rng.sample(pools.names, 2)
        if in_split(pair_key(io, s), split):
            break
    abba = rng.random() < 0.5 if order == "mixed" else order == "ABBA"
    values = {
        "A": io if abba else s,
        "B": s if abba else io,
        "S": s,
        "PLACE": rng.choice(PLACES),
        "OBJECT": rng.choice(IOI_OBJECTS),
    }
    if variant == "hard":
        values["D"] = io if meta["distractor"] == "IO" else s
    text, spans = render(tpl, values)
    io_slot, s_slot = ("A", "B") if abba else ("B", "A")
    key_spans = {"IO": spans[io_slot][0], "S1": spans[s_slot][0], "S2": spans["S"][0]}
    if variant == "hard":
        key_spans["distractor"] = spans["D"][0]
    meta |= {
        "order": "ABBA" if abba else "BABA",
        "IO": io,
        "S": s,
        "place": values["PLACE"],
        "object": values["OBJECT"],
    }
    return Sample(prompt=text, answer=io, spans=key_spans, meta=meta), tpl, values


def sample(
    rng: random.Random,
    *,
    split: str = "train",
    variant: str = "normal",
    template: int | None = None,
    order: str = "mixed",
) -> Sample:
    """One IOI prompt with answer IO (training text: `sample(...).text`)."""
    return _draw(rng, split, variant, template, order)[0]


def draw(
    rng: random.Random,
    pools: Pools = Pools(),
    *,
    split: str = "test",
    variant: str = "normal",
    template: int | None = None,
    order: str = "mixed",
) -> list[Pair]:
    """One p_IOI prompt and its p_ABC corruption; answer IO, wrong answer S (names drawn from `pools`)."""
    clean, tpl, values = _draw(rng, split, variant, template, order, pools)
    io, s = clean.meta["IO"], clean.meta["S"]
    x, y, z = rng.sample([m for m in pools.names if m not in (io, s)], 3)  # new IO, S1, S2
    swap = {io: x, s: y}
    corrupt = {**values, "A": swap[values["A"]], "B": swap[values["B"]], "S": z}
    if "D" in values:
        corrupt["D"] = swap[values["D"]]
    text, _ = render(tpl, corrupt)
    clean = replace(clean, meta=clean.meta | {"corrupt_names": (x, y, z)})
    return [Pair(clean=clean, corrupt_prompt=text, wrong=s)]
