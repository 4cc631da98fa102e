"""`make`: task name -> PromptSet, with validated keyword options."""

from __future__ import annotations

import inspect
import itertools
import random
from collections.abc import Callable
from typing import Any

from interp.tasks import chat, colored_objects, context_prior, entity_tracking, ioi
from interp.tasks.encode import Pair, build_prompt_set, check_count, check_seed
from interp.tasks.promptset import PromptSet

_MODULES = {
    "ioi": ioi,
    "colored_objects": colored_objects,
    "entity_tracking": entity_tracking,
    "context_prior": context_prior,
    "chat": chat,
}
# name -> draw(rng, pools, *, split, **options) -> list[Pair]
TASKS: dict[str, Callable[..., list[Pair]]] = {name: m.draw for name, m in _MODULES.items()}
# name -> pools(tokenizer, *, split, **options): the task's word pools narrowed to the tokenizer's single tokens
POOLS: dict[str, Callable[..., Any]] = {name: m.pools for name, m in _MODULES.items()}


def options(name: str) -> tuple[str, ...]:
    """The keyword options `make` accepts for task `name` (besides n, seed and same_length)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    params = inspect.signature(TASKS[name]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def make(
    name: str, tokenizer: Any, *, n: int, seed: int, same_length: bool = False, **kwargs: Any
) -> PromptSet:
    """`n` tokenised clean/corrupt prompt pairs of task `name`, deterministic in `seed`.

    Options per task (see `options(name)`): all take `split` ("test" by default: held-out contents never
    produced with split="train"; "all" for no split); ioi takes `variant` ("normal" | "hard"), `template`,
    `order`; entity_tracking `n_boxes`; context_prior `format`, `template`. `same_length=True` draws until
    `n` prompts of one token length are found (patching needs equal lengths).

    Words that are answers, named positions or swapped between clean and corrupt prompts are drawn only from
    those that `tokenizer` reads as one token (`<task>.pools`; an error names the pool when too few remain);
    a draw whose clean and corrupt prompts still do not align token for token is redrawn.
    """
    check_count("n", n)
    check_seed(seed)
    valid = options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {name!r}; valid: "
            f"{', '.join(('n', 'seed', 'same_length', *valid))}"
        )
    found = POOLS[name](tokenizer, **kwargs)
    rng = random.Random(seed)
    draw = TASKS[name]
    draws = (draw(rng, found, **kwargs) for _ in itertools.count())
    return build_prompt_set(name, tokenizer, draws, n=n, same_length=same_length, resample=True)
