"""Shared machinery of the task generators: samples, template rendering, splits, and tokenise-and-locate.

A task module draws `Pair`s (a clean `Sample`, its aligned corrupt prompt, the wrong answer);
`build_prompt_set` tokenises them once for every task: prepends BOS, maps the named character spans of key
words to token indices through the offset mapping (so BPE tokenizers work too), checks single-token answers
and clean/corrupt alignment (redrawing a draw that does not align when `resample=True`), and pads.
`single_tokens` narrows a word pool to the words a tokenizer reads as one token, for the generators' pools.
"""

from __future__ import annotations

import string
import zlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from interp.tasks.promptset import PromptSet

Span = tuple[int, int]
Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "test", "all")
HELD_OUT_EVERY = 5  # about 1 in 5 keys (name pairs, question contents, entities) is held out for "test"


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One task prompt with its answer word, named character spans of key words, and metadata.

    `text` (prompt + " " + answer) is the training-text form of the sample.
    """

    prompt: str
    answer: str
    spans: dict[str, Span]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.answer}"


@dataclass(frozen=True, kw_only=True)
class Pair:
    """A clean sample, its corrupt prompt (same token length), the wrong answer and optional options."""

    clean: Sample
    corrupt_prompt: str
    wrong: str
    options: tuple[str, ...] | None = None


# ---------------------------------------------------------------- rendering and splits
def render(template: str, values: Mapping[str, str]) -> tuple[str, dict[str, list[Span]]]:
    """Fill `{SLOT}` placeholders; return the text and the character spans of every filled slot, in order."""
    parts: list[str] = []
    spans: dict[str, list[Span]] = defaultdict(list)
    pos = 0
    for literal, slot, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        pos += len(literal)
        if slot is not None:
            if slot not in values:
                raise KeyError(f"template {template!r} needs a value for {{{slot}}}")
            word = values[slot]
            parts.append(word)
            spans[slot].append((pos, pos + len(word)))
            pos += len(word)
    return "".join(parts), dict(spans)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def in_split(key: str, split: str) -> bool:
    """Whether the content `key` belongs to `split`: a stable hash holds out about 1 in 5 keys as "test"."""
    if split == "all":
        return True
    held_out = zlib.crc32(key.encode()) % HELD_OUT_EVERY == 0
    return held_out == (split == "test")


def check_choice(label: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {label} {value!r}; valid: {', '.join(map(repr, valid))}")


def check_seed(seed: Any) -> int:
    """A seed must be a non-negative int (`random.Random(-1)` would repeat the prompts of seed 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r} ({type(seed).__name__})")
    return seed


def check_count(label: str, value: Any) -> int:
    """A count such as `n` must be a positive int (not a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r} ({type(value).__name__})")
    return value


# ---------------------------------------------------------------- tokenise and locate
@dataclass(frozen=True, kw_only=True)
class _Row:
    pair: Pair
    group: int
    clean: list[int]
    corrupt: list[int]
    answer: int
    wrong: int
    options: list[int] | None
    positions: dict[str, int]


def encode(tokenizer: Any, text: str) -> tuple[list[int], list[Span]]:
    """Token ids and character offsets of `text`, with BOS prepended when the tokenizer has one."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("task prompts need a fast tokenizer (offset mapping) to locate key words")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids, offsets = [tokenizer.bos_token_id, *ids], [(0, 0), *offsets]
    return ids, offsets


class UnusableDraw(ValueError):
    """A drawn pair that cannot be used with this tokenizer (clean and corrupt do not align, or an answer is
    not one token in its prompt); `build_prompt_set(resample=True)` draws again instead of raising."""


def token_index(offsets: Sequence[Span], span: Span) -> int | None:
    """Index of the last token overlapping the character span (None if no token does)."""
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < span[1] and e > span[0]]
    return hits[-1] if hits else None


def word_token(tokenizer: Any, word: str, context: str = "the") -> int | None:
    """The id of `word` read as one token after a space, or None when it is not exactly one known token.

    Tokenizers that add a space marker of their own (SentencePiece: `" Mary"` -> `["▁", "▁Mary"]`) are
    handled by reading the word as the continuation of `context`: `context + " " + word` minus `context`.
    """
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        head = tokenizer(context, add_special_tokens=False)["input_ids"]
        full = tokenizer(f"{context} {word}", add_special_tokens=False)["input_ids"]
        ids = full[len(head) :] if full[: len(head)] == head else full
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or (unk is not None and ids[0] == unk):
        return None
    return ids[0]


def single_tokens(
    tokenizer: Any, label: str, words: Sequence[str], *, need: int, why: str
) -> tuple[str, ...]:
    """The words of a generator's pool that `tokenizer` reads as one token each (order kept).

    Raises when fewer than `need` survive, naming the pool, what the words are for and the words that split.
    """
    kept = tuple(w for w in words if word_token(tokenizer, w) is not None)
    if len(kept) < need:
        split = [w for w in words if w not in kept]
        shown = ", ".join(repr(w) for w in split[:12]) + (", ..." if len(split) > 12 else "")
        raise ValueError(
            f"only {len(kept)} of the {len(words)} {label} are single tokens of this tokenizer; need {need} "
            f"({why}). Not single tokens: {shown}"
        )
    return kept


def answer_token(tokenizer: Any, word: str, prompt: str, cache: dict[str, int] | None = None) -> int:
    """The id of `" " + word`, which must be exactly one known token (raises naming the word and prompt).

    Tokenizers that add a space marker of their own (SentencePiece: `" Mary"` -> `["▁", "▁Mary"]`) are
    handled by reading the answer as the continuation of the prompt: `prompt + " " + word` minus `prompt`.
    """
    if cache is not None and word in cache:
        return cache[word]
    tid = word_token(tokenizer, word, prompt)
    if tid is None:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(" " + word, add_special_tokens=False)["input_ids"])
        raise UnusableDraw(
            f"answer word {word!r} is not a single known token ({pieces}) in prompt {prompt!r}"
        )
    if cache is not None:
        cache[word] = tid
    return tid


def _encode_pair(tokenizer: Any, pair: Pair, group: int, cache: dict[str, int]) -> _Row:
    prompt = pair.clean.prompt
    clean, offsets = encode(tokenizer, prompt)
    corrupt, _ = encode(tokenizer, pair.corrupt_prompt)
    if len(clean) != len(corrupt):
        raise UnusableDraw(
            f"clean and corrupt prompts differ in token length "
            f"({len(clean)} vs {len(corrupt)}): "
            f"{prompt!r} vs {pair.corrupt_prompt!r}"
        )
    positions: dict[str, int] = {}
    for key, span in pair.clean.spans.items():
        idx = token_index(offsets, span)
        if idx is None:
            raise ValueError(f"no token covers {key} {prompt[span[0] : span[1]]!r} in prompt {prompt!r}")
        positions[key] = idx
    positions["END"] = len(clean) - 1
    options = None
    if pair.options is not None:
        options = [answer_token(tokenizer, w, prompt, cache) for w in pair.options]
    return _Row(
        pair=pair,
        group=group,
        clean=clean,
        corrupt=corrupt,
        positions=positions,
        options=options,
        answer=answer_token(tokenizer, pair.clean.answer, prompt, cache),
        wrong=answer_token(tokenizer, pair.wrong, prompt, cache),
    )


def _check_answers_differ(rows: Sequence[_Row]) -> None:
    same = [r for r in rows if r.answer == r.wrong]
    if same:
        examples = "; ".join(
            f"{r.pair.clean.prompt!r} -> {r.pair.clean.answer!r} vs {r.pair.wrong!r}" for r in same[:3]
        )
        raise ValueError(
            f"{len(same)} of {len(rows)} prompts have the same answer and wrong answer token "
            f"(e.g. {examples})"
        )


def _collect(
    tokenizer: Any, draws: Iterator[list[Pair]], n: int, same_length: bool, resample: bool
) -> list[_Row]:
    cache: dict[str, int] = {}
    buckets: dict[int, list[_Row]] = defaultdict(list)
    rows: list[_Row] = []
    skipped: list[str] = []
    max_draws = 100 + 50 * n
    for group, draw in enumerate(draws):
        if group >= max_draws:
            if skipped:
                raise ValueError(
                    f"could not draw {n} usable prompts in {max_draws} draws: {len(skipped)} draws did not "
                    f"suit this tokenizer (e.g. {skipped[0]})"
                )
            raise ValueError(
                f"could not draw {n} prompts of one token length in {max_draws} draws; "
                "pass a template or a smaller n"
            )
        try:
            encoded = [_encode_pair(tokenizer, p, group, cache) for p in draw]
        except UnusableDraw as e:
            if not resample:
                raise
            skipped.append(str(e))
            continue
        if n % len(encoded):
            raise ValueError(
                f"n={n} must be a multiple of {len(encoded)}: each draw gives {len(encoded)} prompts"
            )
        if same_length:
            bucket = buckets[len(encoded[0].clean)]
            bucket.extend(encoded)
            if len(bucket) >= n:
                return bucket
        else:
            rows.extend(encoded)
            if len(rows) >= n:
                return rows
    have = max((len(b) for b in buckets.values()), default=0) if same_length else len(rows)
    raise ValueError(
        f"the draws ran out after {have} of n={n} prompts"
        + (f" ({len(skipped)} draws did not suit this tokenizer, e.g. {skipped[0]})" if skipped else "")
    )


def build_prompt_set(
    name: str,
    tokenizer: Any,
    draws: Iterator[list[Pair]],
    *,
    n: int,
    same_length: bool = False,
    resample: bool = False,
) -> PromptSet:
    """Tokenise `n` prompts from `draws` into a PromptSet (all of one token length if `same_length`).

    Each draw is a list of pairs that belong together (e.g. one context-vs-prior question under both intents);
    they share `metadata[i]["pair_id"]` (the draw's index). A draw whose clean and corrupt prompts do not align
    token for token, or whose answer is not one token in its prompt, raises; with `resample=True` (an endless
    stream of draws) it is skipped and the next draw is taken.
    """
    check_count("n", n)
    rows = _collect(tokenizer, draws, n, same_length, resample)
    _check_answers_differ(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
    width = max(len(r.clean) for r in rows)

    def padded(key: str) -> torch.Tensor:
        ids = [getattr(r, key) + [pad] * (width - len(r.clean)) for r in rows]
        return torch.tensor(ids, dtype=torch.long)

    n_options = {len(r.options) for r in rows if r.options is not None}
    if len(n_options) > 1 or (n_options and any(r.options is None for r in rows)):
        raise ValueError(f"prompts of {name!r} have different numbers of options: {sorted(n_options)}")
    keys = rows[0].positions.keys()
    if any(r.positions.keys() != keys for r in rows):
        raise ValueError(f"prompts of {name!r} name different key positions")
    return PromptSet(
        name=name,
        clean=padded("clean"),
        corrupt=padded("corrupt"),
        attention_mask=torch.tensor([[1] * len(r.clean) + [0] * (width - len(r.clean)) for r in rows]),
        answer_ids=torch.tensor([r.answer for r in rows]),
        wrong_ids=torch.tensor([r.wrong for r in rows]),
        end=torch.tensor([len(r.clean) - 1 for r in rows]),
        positions={k: torch.tensor([r.positions[k] for r in rows]) for k in keys},
        prompts=[r.pair.clean.prompt for r in rows],
        corrupt_prompts=[r.pair.corrupt_prompt for r in rows],
        metadata=[
            r.pair.clean.meta | {"answer": r.pair.clean.answer, "wrong": r.pair.wrong, "pair_id": r.group}
            for r in rows
        ],
        options=torch.tensor([r.options for r in rows]) if n_options else None,
        pad_id=int(pad),
    )
