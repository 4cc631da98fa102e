"""Invariants every task PromptSet must satisfy on any tokenizer: decode each named position and answer."""

from __future__ import annotations

import torch

from interp.tasks import PromptSet
from interp.tasks.encode import encode
from interp.tasks.words import CCS_INSTRUCTIONS, CCS_WEIGHTS, split_words

INTENT_WORDS = {w for pair in (*CCS_INSTRUCTIONS, CCS_WEIGHTS) for s in pair for w in split_words(s)}


def word_at(tokenizer, token_id) -> str:
    """The text of one token, without the space it carries."""
    return tokenizer.decode([int(token_id)]).strip()


def expected_words(name: str, meta: dict) -> dict[str, set[str]]:
    """What each named position (END aside) must decode to, from the prompt's metadata."""
    if name == "ioi":
        out = {"IO": {meta["IO"]}, "S1": {meta["S"]}, "S2": {meta["S"]}}
        if meta["variant"] == "hard":
            out["distractor"] = {meta[meta["distractor"]]}
        return out
    if name == "colored_objects":
        q, j = meta["query_index"], meta["corrupt_index"]
        obj, col = meta["objects"], meta["colors"]
        return {
            "query_object": {obj[q]},
            "answer_object": {obj[q]},
            "answer_color": {col[q]},
            "wrong_color": {col[j]},
        } | {f"other_color_{k}": {c} for k, c in enumerate(c for i, c in enumerate(col) if i != q)}
    if name == "entity_tracking":
        label = meta["labels"][meta["query_index"]]
        return {
            "query_label": {label},
            "prev_query_label": {label},
            "answer_object": {meta["objects"][meta["query_index"]]},
        }
    if name == "chat":
        return {"topic": {meta["topic"]}}
    out = {
        "context_entity": {meta["entity"]},
        "query_entity": {meta["entity"]},
        "context_attribute": {meta["context"]},
    }
    if meta["format"] != "none":
        out["intent"] = INTENT_WORDS
    return out


# the named positions at which a task's corrupt prompt differs from its clean prompt (None: anywhere)
SWAPPED = {
    "ioi": ("IO", "S1", "S2", "distractor"),
    "colored_objects": ("query_object",),
    "entity_tracking": None,
    "context_prior": ("intent",),
    "chat": ("topic",),
}


def check_prompt_set(ps: PromptSet, tokenizer, name: str) -> None:
    """Shapes, padding, BOS, answers, named positions and clean/corrupt alignment of every row of `ps`."""
    b, width = ps.clean.shape
    assert ps.clean.dtype == ps.corrupt.dtype == ps.answer_ids.dtype == torch.long
    assert len(ps) == b == len(ps.prompts) == len(ps.metadata)
    assert width == int(ps.lengths.max())
    assert torch.equal(ps.end, ps.lengths - 1)
    assert bool((ps.answer_ids != ps.wrong_ids).all())
    # padding is the same in clean and corrupt, and right-aligned
    assert bool((ps.clean[ps.attention_mask == 0] == ps.pad_id).all())
    assert bool((ps.corrupt[ps.attention_mask == 0] == ps.pad_id).all())
    bos = tokenizer.bos_token_id
    cache: dict[int, str] = {}

    def word(tid) -> str:
        tid = int(tid)
        if tid not in cache:
            cache[tid] = word_at(tokenizer, tid)
        return cache[tid]

    for i in range(b):
        meta, prompt = ps.metadata[i], ps.prompts[i]
        n = int(ps.lengths[i])
        assert ps.attention_mask[i, :n].all() and not ps.attention_mask[i, n:].any()
        # rows are the tokenisation of the prompt strings, BOS first when the tokenizer has one
        clean, corrupt = ps.clean[i, :n].tolist(), ps.corrupt[i, :n].tolist()
        assert clean == encode(tokenizer, prompt)[0]
        assert corrupt == encode(tokenizer, ps.corrupt_prompts[i])[0]
        if bos is not None:
            assert clean[0] == bos == corrupt[0]
        else:
            assert prompt.startswith(word(clean[0])) and word(clean[0])
        assert word(ps.answer_ids[i]) == meta["answer"]
        assert word(ps.wrong_ids[i]) == meta["wrong"]
        if ps.options is not None:
            assert {word(t) for t in ps.options[i]} == {c.title() for c in meta["colors"]}
        assert prompt.endswith(word(clean[-1])) and int(ps.positions["END"][i]) == n - 1
        expected = expected_words(name, meta)
        assert set(ps.positions) == set(expected) | {"END"}
        for key, words in expected.items():
            assert word(ps.clean[i, ps.positions[key][i]]) in words, (key, prompt)
        swapped = SWAPPED[name]
        if swapped is not None:  # the pair aligns token for token: it differs exactly at the swapped words
            diff = {j for j in range(n) if clean[j] != corrupt[j]}
            want = {
                int(ps.positions[k][i]) for k in swapped if k in ps.positions
            }  # "none": both prompts equal
            assert diff == want, (prompt, ps.corrupt_prompts[i])
