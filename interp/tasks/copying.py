"""Copying by induction (Olsson et al. 2022) as a PromptSet: a sequence of distinct words, then its beginning
again; the answer is the word that followed the last repeated one."""

from __future__ import annotations

import random
from typing import Any

from interp.tasks.encode import Pair, Sample, build_prompt_set, single_tokens
from interp.tasks.promptset import PromptSet
from interp.tasks.words import vocabulary


def copy_prompts(tokenizer: Any, n: int, seed: int, *, length: int = 8, query: int = 5) -> PromptSet:
    """`length` distinct random words, then the first `query` again -> the word that followed the last of them.

    The corrupt prompt replaces that word in the first half by another, so the answer changes (the wrong
    answer). Positions: `prev` (the earlier copy of the last token: a duplicate, as S1 is in IOI), `answer_pos`
    (the word to copy), `END`.
    """
    if not 1 <= query < length:
        raise ValueError(f"query must lie in [1, {length - 1}], got {query}")
    alpha = sorted({w for w in vocabulary() if w.isalpha()})
    words = list(single_tokens(tokenizer, "words", alpha, need=length + 1, why="distinct words to copy"))
    rng = random.Random(seed)

    def draw() -> list[Pair]:
        seq = rng.sample(words, length + 1)
        other, seq = seq[-1], seq[:length]
        text = " ".join(seq + seq[:query])
        starts = [sum(len(w) + 1 for w in seq[:i]) for i in range(length)]
        spans = {
            "prev": (starts[query - 1], starts[query - 1] + len(seq[query - 1])),
            "answer_pos": (starts[query], starts[query] + len(seq[query])),
        }
        corrupt = " ".join(seq[:query] + [other] + seq[query + 1 :] + seq[:query])
        return [
            Pair(
                clean=Sample(prompt=text, answer=seq[query], spans=spans, meta={"template": 0}),
                corrupt_prompt=corrupt,
                wrong=other,
            )
        ]

    return build_prompt_set("copy", tokenizer, (draw() for _ in iter(int, 1)), n=n)
