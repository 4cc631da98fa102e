"""Every task generator on realistic tokenizers: GPT-2's BPE, SentencePiece-style (two pipelines), no BOS."""

from __future__ import annotations

import random

import pytest
import torch
from fixtures import GPT2_DIR, REALISTIC
from task_checks import check_prompt_set, word_at

from interp.models.tokenizer import build_word_tokenizer
from interp.tasks import desiderata, entity_tracking, make, vocabulary
from interp.tasks.encode import UnusableDraw, build_prompt_set, single_tokens, word_token
from interp.tasks.words import COLORS, ET_OBJECTS, FACTS, NAMES

CONFIGS = [
    ("ioi", {}),
    ("ioi", {"variant": "hard"}),
    ("colored_objects", {}),
    ("entity_tracking", {}),
    ("context_prior", {}),
    ("context_prior", {"format": "weight"}),
    ("context_prior", {"format": "none"}),
    ("chat", {}),
]
SEEDS = range(5)


@pytest.fixture(scope="module", params=list(REALISTIC))
def realistic(request):
    return request.param, REALISTIC[request.param]()


def test_fixture_tokenizers_are_the_real_conventions():
    gpt2, sp, legacy, nobos = (REALISTIC[k]() for k in REALISTIC)
    assert gpt2(" Mary and John")["input_ids"] == [5335, 290, 1757]  # GPT-2's real ids
    assert gpt2("Hello world")["input_ids"] == [15496, 995]  # no BOS prepended by default
    assert (gpt2.bos_token_id, gpt2.eos_token_id, gpt2.unk_token_id, gpt2.pad_token) == (
        50256,
        50256,
        50256,
        None,
    )
    assert len(gpt2) == 50257
    assert sp("Mary")["input_ids"][0] == sp.bos_token_id == 1 and sp.convert_ids_to_tokens([0, 2]) == [
        "<unk>",
        "</s>",
    ]
    for tok in (sp, legacy):
        assert tok.convert_ids_to_tokens(tok("Mary and", add_special_tokens=False)["input_ids"]) == [
            "▁Mary",
            "▁and",
        ]
        ids = tok("é", add_special_tokens=False)["input_ids"]  # byte fallback
        assert tok.convert_ids_to_tokens(ids)[-2:] == ["<0xC3>", "<0xA9>"] and tok.decode(ids) == "é"
    assert sp.convert_ids_to_tokens(sp(" Mary", add_special_tokens=False)["input_ids"]) == ["▁Mary"]
    assert legacy.convert_ids_to_tokens(legacy(" Mary", add_special_tokens=False)["input_ids"]) == [
        "▁",
        "▁Mary",
    ]
    assert nobos.bos_token_id is None and nobos.pad_token_id == nobos.eos_token_id == 50256


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_every_task_on_realistic_tokenizers(realistic, name, kwargs):
    """n=256 for seeds 0-4: single-token answers, named positions decode to their words, pairs align.

    Every row of seed 0 is checked, every 8th row of seeds 1-4 (the checks cost more than the generation)."""
    _, tok = realistic
    for seed in SEEDS:
        ps = make(name, tok, n=256, seed=seed, **kwargs)
        assert len(ps) == 256
        check_prompt_set(ps if seed == 0 else ps.subset(slice(seed, None, 8)), tok, name)
    assert ps.prompts != make(name, tok, n=256, seed=0, **kwargs).prompts


@pytest.mark.parametrize("n_boxes", range(2, entity_tracking.MAX_BOXES + 1))
def test_entity_tracking_every_n_boxes(n_boxes):
    for tok in (REALISTIC["gpt2_bpe"](), REALISTIC["sentencepiece_legacy"]()):
        ps = make("entity_tracking", tok, n=16, seed=n_boxes, n_boxes=n_boxes)
        check_prompt_set(ps, tok, "entity_tracking")
        assert all(p.count("Box") == n_boxes + 1 for p in ps.prompts)


@pytest.mark.parametrize("kind", entity_tracking.DESIDERATA)
def test_desiderata_on_realistic_tokenizers(realistic, kind):
    _, tok = realistic
    for n_boxes in (3, entity_tracking.MAX_BOXES):
        base, source, target = desiderata(tok, kind, n=24, seed=0, n_boxes=n_boxes)
        assert torch.equal(base.lengths, source.lengths)  # patching source -> base needs equal lengths
        for ps in (base, source):
            for i, meta in enumerate(ps.metadata):
                label = meta["labels"][meta["query_index"]]
                assert word_at(tok, ps.clean[i, ps.positions["query_label"][i]]) == label
                assert word_at(tok, ps.answer_ids[i]) == meta["answer"]
        assert [word_at(tok, t) for t in target] == [m["target"] for m in base.metadata]


def test_word_pools_are_filtered_per_tokenizer():
    gpt2 = REALISTIC["gpt2_bpe"]()
    assert word_token(gpt2, "kite") is None and word_token(gpt2, "Mary") == 5335
    ps = make("entity_tracking", gpt2, n=256, seed=0, n_boxes=12)
    used = {o for m in ps.metadata for o in m["objects"]}
    assert "kite" not in used and len(used) == len(ET_OBJECTS) - 1  # " kite" is two GPT-2 tokens
    cities = {m["entity"] for m in make("context_prior", gpt2, n=256, seed=0, split="all").metadata}
    assert "Bogota" not in cities and "Paris" in cities  # " Bogota" -> " Bog" "ota"
    # SentencePiece as transformers reads it: the answer " Mary" is read in context (legacy: "▁" "▁Mary")
    legacy = REALISTIC["sentencepiece_legacy"]()
    assert len(legacy(" Mary", add_special_tokens=False)["input_ids"]) == 2
    assert word_token(legacy, "Mary") == legacy.convert_tokens_to_ids("▁Mary")


def test_too_few_words_is_a_clear_error():
    no_colors = build_word_tokenizer([w for w in vocabulary() if w not in ("Blue", "red", "Green", "yellow")])
    ps = make("colored_objects", no_colors, n=32, seed=0)  # 4 of 8 colours survive: enough
    assert {c for m in ps.metadata for c in m["colors"]} == set(COLORS) - {"blue", "red", "green", "yellow"}
    two = build_word_tokenizer([w for w in vocabulary() if w.lower() not in COLORS[2:]])
    with pytest.raises(ValueError, match=r"only 2 of the 8 colours are single tokens.*need 3.*'yellow'"):
        make("colored_objects", two, n=4, seed=0)
    few = build_word_tokenizer([w for w in vocabulary() if w not in NAMES[4:]])
    with pytest.raises(ValueError, match=r"only 4 of the 60 IOI names.*need 5 \(IO, S and three corrupt"):
        make("ioi", few, n=4, seed=0)
    cities = {f.entity for f in FACTS}
    no_cities = build_word_tokenizer([w for w in vocabulary() if w not in cities])
    with pytest.raises(ValueError, match="only 0 of the 64 cities"):
        make("context_prior", no_cities, n=4, seed=0)
    with pytest.raises(ValueError, match=r"reply words.*'Sorry'"):  # the word tokenizer lacks the chat words
        make("chat", build_word_tokenizer(vocabulary()), n=4, seed=0)
    small = build_word_tokenizer([w for w in vocabulary() if w not in ET_OBJECTS[:7]])
    make("entity_tracking", small, n=4, seed=0, n_boxes=22)  # 43 objects: enough for a prompt
    with pytest.raises(
        ValueError, match=r"only 43 of the 50 entity-tracking objects.*need 44 \(22 boxes and a"
    ):
        desiderata(small, "positional", n=2, seed=0, n_boxes=22)  # sources need objects absent from the base
    assert single_tokens(few, "IOI names", NAMES, need=4, why="test") == NAMES[:4]


def test_impossible_alignment_names_why():
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(str(GPT2_DIR))
    tok.add_tokens(["1.00"])  # "1.00" is one token, "0.00" three: the weight intents can never align
    with pytest.raises(ValueError, match=r"cannot align.*weight intents.*'1.00' vs '0.00'"):
        make("context_prior", tok, n=4, seed=0, format="weight")
    make("context_prior", tok, n=4, seed=0, format="instruction")  # the other formats are unaffected


def test_misaligned_draws_are_redrawn():
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(str(GPT2_DIR))
    tok.add_tokens([" F,"])  # "Box F," is one token fewer than "Box G,": some clean/corrupt pairs misalign
    ps = make("entity_tracking", tok, n=64, seed=0)
    assert len(ps) == 64 and ps.metadata[-1]["pair_id"] > 63  # misaligned draws were skipped
    assert torch.equal(ps.attention_mask, (ps.corrupt != ps.pad_id) | (ps.attention_mask == 1))
    rng = random.Random(0)
    draws = (entity_tracking.draw(rng) for _ in range(200))
    with pytest.raises(UnusableDraw, match="differ in token length"):
        build_prompt_set("et", tok, draws, n=64)  # without resample the first misaligned draw raises
    finite = iter([entity_tracking.draw(random.Random(s)) for s in range(3)])
    with pytest.raises(ValueError, match=r"ran out after 3 of n=4 prompts"):
        build_prompt_set("et", build_word_tokenizer(vocabulary()), finite, n=4)


def test_copy_prompts_on_realistic_tokenizers(realistic):
    """Copying (circuit_reuse's induction task) draws words that are one token after a space, also where the
    tokenizer adds a bare `▁` of its own (Llama-2's legacy pipeline split every word and left none)."""
    from interp.tasks.copying import copy_prompts

    _, tok = realistic
    ps = copy_prompts(tok, 16, seed=0, length=6, query=4)
    for i, prompt in enumerate(ps.prompts):
        words = prompt.split()
        row = ps.clean[i]
        prev, ans, end = (int(ps.positions[k][i]) for k in ("prev", "answer_pos", "END"))
        assert word_at(tok, row[prev]) == word_at(tok, row[end]) == words[3]
        assert word_at(tok, row[ans]) == word_at(tok, ps.answer_ids[i]) == words[4]
        assert word_at(tok, ps.wrong_ids[i]) == ps.corrupt_prompts[i].split()[4]
