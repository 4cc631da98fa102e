"""Candidate pools for data selection: a mixed pool from the organisms' corpus families, or rows of Hugging Face
datasets (online), each sample with its family (the label that selection precision is measured against).

`shuffled_<family>` is a derived family with a family's words in random order: the same words, no structure.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

SHUFFLED = "shuffled_"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoolItem:
    """One candidate sample: its text, family, and the (prompt, completion) it trains on."""

    text: str
    family: str
    prompt: str = ""
    completion: str = ""


def pool_families() -> list[str]:
    """Every family name a pool can draw: the corpus sources and their `shuffled_` variants."""
    from interp.zoo.corpus import SOURCES

    return [*SOURCES, *(SHUFFLED + s for s in SOURCES)]


def family_sampler(family: str) -> Callable[[random.Random], PoolItem]:
    """A function drawing one `PoolItem` of `family` (a corpus source or `shuffled_<source>`) from an rng."""
    from interp.zoo.corpus import SOURCES

    base = family.removeprefix(SHUFFLED)
    if base not in SOURCES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(pool_families())}")

    def draw(rng: random.Random) -> PoolItem:
        ex = SOURCES[base](rng)
        text = f"{ex.prompt} {ex.completion}".strip()
        if family.startswith(SHUFFLED):  # the same words, in random order: no structure left
            words = text.split()
            rng.shuffle(words)
            text = " ".join(words)
            return PoolItem(text=text, family=family, completion=text)
        return PoolItem(text=text, family=family, prompt=ex.prompt, completion=ex.completion)

    return draw


def organism_pool(
    *,
    families: Sequence[str],
    target_family: str,
    pool_size: int,
    target_share: float,
    n_targets: int,
    seed: int,
) -> tuple[list[PoolItem], list[PoolItem]]:
    """(pool, targets): `target_share` of the pool from the target family, the rest split evenly over the other
    families, shuffled; the targets are other examples of the target family (no text shared with the pool)."""
    others = [f for f in families if f != target_family]
    samplers = {f: family_sampler(f) for f in [target_family, *others]}
    rng = random.Random(seed)
    n_target = round(target_share * pool_size)
    if n_target < 1 or not others:
        raise ValueError("the pool needs at least one target-family sample and one other family")
    pool = [samplers[target_family](rng) for _ in range(n_target)]
    pool += [samplers[others[i % len(others)]](rng) for i in range(pool_size - n_target)]
    rng.shuffle(pool)
    seen = {p.text for p in pool}
    targets: list[PoolItem] = []
    for _ in range(1000 * n_targets):
        if len(targets) == n_targets:
            break
        t = samplers[target_family](rng)
        if t.text not in seen:
            seen.add(t.text)
            targets.append(t)
    return pool, targets


def hf_text(row: Mapping[str, Any], tokenizer: Any) -> str:
    """A dataset row as one formatted sample: chat turns through the tokenizer's chat template when it has one."""
    if "conversations" in row:  # OpenHermes: [{"from": "human"|"gpt"|"system", "value": ...}]
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        msgs = [
            {"role": roles.get(t["from"], t["from"]), "content": t["value"]} for t in row["conversations"]
        ]
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(msgs, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)
    if "question" in row and "answer" in row:  # GSM8K
        return f"{row['question']}\n{row['answer']}"
    return str(row.get("text", row))


def hf_pool(
    *,
    pool: str,
    label_field: str,
    targets: str,
    targets_config: str | None,
    targets_split: str,
    target_label: str,
    pool_size: int,
    n_targets: int,
    seed: int,
    tokenizer: Any,
) -> tuple[list[PoolItem], list[PoolItem]]:
    """(pool, targets) from Hugging Face datasets (online): `pool_size` rows of `pool` (seeded shuffle) and
    `n_targets` rows of `targets`; a pool row's family is its `label_field`."""
    from datasets import load_dataset

    pool_ds = load_dataset(pool, split="train").shuffle(seed=seed).select(range(pool_size))
    tgt_ds = (
        load_dataset(targets, targets_config, split=targets_split).shuffle(seed=seed).select(range(n_targets))
    )
    items = [PoolItem(text=hf_text(r, tokenizer), family=str(r.get(label_field))) for r in pool_ds]
    goals = [PoolItem(text=hf_text(r, tokenizer), family=target_label) for r in tgt_ds]
    return items, goals
