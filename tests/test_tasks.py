"""Task generators: invariants of every PromptSet, splits, determinism, and bad inputs."""

from __future__ import annotations

import ast
import importlib.util
import random
from pathlib import Path

import pytest
import torch
from task_checks import check_prompt_set, word_at

from interp.models.tokenizer import build_word_tokenizer
from interp.tasks import (
    Pair,
    PromptSet,
    Sample,
    colored_objects,
    context_prior,
    desiderata,
    entity_tracking,
    ioi,
    make,
    vocabulary,
)
from interp.tasks.encode import build_prompt_set, in_split, render
from interp.tasks.words import BOX_LABELS, FACTS, split_words

CONFIGS = [
    ("ioi", {}),
    ("ioi", {"variant": "hard"}),
    ("colored_objects", {}),
    ("entity_tracking", {}),
    ("entity_tracking", {"n_boxes": 7}),
    ("context_prior", {}),
    ("context_prior", {"format": "weight"}),
    ("context_prior", {"format": "none"}),
]
SAMPLERS = {
    "ioi": ioi.sample,
    "colored_objects": colored_objects.sample,
    "entity_tracking": entity_tracking.sample,
    "context_prior": context_prior.sample,
}


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(vocabulary())


def _training_texts(n: int = 400) -> list[str]:
    rng = random.Random(1)
    texts = [f(rng, split="all").text for _ in range(n) for f in SAMPLERS.values()]
    texts += [ioi.sample(rng, variant="hard", split="all").text for _ in range(n)]
    return texts + [context_prior.sample(rng, format="weight", split="all").text for _ in range(n)]


def _trained_tokenizer(vocab_size: int, style: str = "gpt2"):
    """A subword tokenizer trained offline on task text; no BOS added, no pad token.

    "gpt2": byte-level BPE (" Mary" is one token). "llama": SentencePiece-style, a normalizer turns spaces into
    "▁" and prepends one, so " Mary" -> ["▁", "▁Mary"] and answers must be read in context.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    special = "<|endoftext|>" if style == "gpt2" else "</s>"
    if style == "gpt2":
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        t.decoder = decoders.ByteLevel()
        t.post_processor = processors.ByteLevel(trim_offsets=True)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[special], show_progress=False, initial_alphabet=alphabet
    )
    t.train_from_iterator(_training_texts(), trainer)
    if style == "llama":  # inference as HF Llama: no whitespace split
        t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        t.pre_tokenizer = pre_tokenizers.Punctuation()
        t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token=special, eos_token=special, unk_token=special
    )


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def subword(request):
    return request.param, _trained_tokenizer(4000, request.param)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_prompt_set_invariants(tok, name, kwargs):
    ps = make(name, tok, n=40, seed=3, **kwargs)
    assert len(ps) == 40 and ps.name == name
    check_prompt_set(ps, tok, name)
    assert not bool((ps.clean == tok.unk_token_id).any())
    assert not bool((ps.corrupt == tok.unk_token_id).any())
    differs = (ps.clean != ps.corrupt).any(1)
    assert bool(differs.all()) != (kwargs.get("format") == "none")  # "none": both intents share one prompt


@pytest.mark.parametrize(("name", "kwargs"), [CONFIGS[i] for i in (1, 2, 4, 5)])
def test_subword_tokenizer_without_bos_or_pad(subword, name, kwargs):
    """BPE tokenizers: BOS is prepended by us, padding falls back to eos, positions come from offsets."""
    style, tok = subword
    assert len(tok(" Mary", add_special_tokens=False)["input_ids"]) == {"gpt2": 1, "llama": 2}[style]
    assert tok.pad_token_id is None and tok("Mary")["input_ids"][0] != tok.bos_token_id
    ps = make(name, tok, n=12, seed=0, **kwargs)
    assert ps.pad_id == tok.eos_token_id
    check_prompt_set(ps, tok, name)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _module_imports(module: str) -> set[str]:
    """Modules imported at import time (not inside functions) by `module`, following interp.* modules."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = _find_spec(name) if name.startswith("interp") else None
        if spec is None or spec.origin is None:
            continue
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # parent packages
        stack = list(ast.parse(Path(spec.origin).read_text()).body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                stack += list(ast.iter_child_nodes(node))
    return seen


def test_import_does_not_load_backends():
    imported = {m.split(".")[0] for m in _module_imports("interp.tasks") | _module_imports("interp.metrics")}
    assert "torch" in imported and "interp" in imported
    assert not imported & {"transformer_lens", "nnsight", "sae_lens"}


def test_vocabulary_is_fixed_and_covers_training_text(tok):
    vocab = vocabulary()
    assert vocab == vocabulary() and len(vocab) == len(set(vocab))
    assert {"Blue", "blue", "Box", "F", "Mary", "France", "ignoring", "1", "00", ",", "?"} <= set(vocab)
    assert not {"A", "I", "Q"} & set(BOX_LABELS)
    ids = tok(_training_texts(50))["input_ids"]
    assert not any(tok.unk_token_id in row for row in ids)


def test_answers_are_the_sample_answers():
    rng = random.Random(0)
    s = colored_objects.sample(rng)
    assert s.answer == s.answer.capitalize() and s.answer.lower() in s.meta["colors"]
    assert s.text == s.prompt + " " + s.answer
    fact = context_prior.sample(rng, intent="prior")
    assert fact.answer == fact.meta["prior"] != fact.meta["context"]
    assert "Paris is in France." in context_prior.fact_sentences()


@pytest.mark.parametrize(("name", "kwargs"), [CONFIGS[0], CONFIGS[2], CONFIGS[3], CONFIGS[5]])
def test_deterministic_in_seed(tok, name, kwargs):
    a, b, c = (make(name, tok, n=10, seed=s, **kwargs) for s in (7, 7, 8))
    assert a.prompts == b.prompts and torch.equal(a.clean, b.clean) and torch.equal(a.corrupt, b.corrupt)
    assert a.prompts != c.prompts


def test_held_out_splits_are_disjoint(tok):
    rng = random.Random(0)
    train = [ioi.sample(rng, split="train") for _ in range(3000)]
    test = make("ioi", tok, n=200, seed=0, split="test")
    train_pairs = {ioi.pair_key(s.meta["IO"], s.meta["S"]) for s in train}
    test_pairs = {ioi.pair_key(m["IO"], m["S"]) for m in test.metadata}
    assert train_pairs and test_pairs and not train_pairs & test_pairs
    assert not {s.prompt for s in train} & set(test.prompts)

    train_entities = {f.entity for f in context_prior.facts("train")}
    test_entities = {m["entity"] for m in make("context_prior", tok, n=100, seed=0).metadata}
    assert len(train_entities) + len(context_prior.facts("test")) == len(FACTS)
    assert test_entities and not train_entities & test_entities

    et_train = {
        entity_tracking.Boxes(objects=tuple(s.meta["objects"]), labels=tuple(s.meta["labels"]), query=0).key()
        for s in (entity_tracking.sample(rng) for _ in range(500))
    }
    et_test = make("entity_tracking", tok, n=50, seed=0)
    assert all(not in_split(k, "test") for k in et_train)
    assert not set(et_test.prompts) & {entity_tracking.sample(rng).prompt for _ in range(500)}
    co_test = make("colored_objects", tok, n=50, seed=0)
    co_train = {colored_objects.sample(rng).prompt.split("\n\n")[-1] for _ in range(2000)}
    assert not {p.split("\n\n")[-1] for p in co_test.prompts} & co_train


@pytest.mark.parametrize("n_boxes", [2, 5])
def test_entity_tracking_n_boxes(tok, n_boxes):
    ps = make("entity_tracking", tok, n=20, seed=1, n_boxes=n_boxes)
    assert torch.equal(ps.positions["query_label"], ps.end - 2)
    for i, prompt in enumerate(ps.prompts):
        assert prompt.count("Box") == n_boxes + 1 == ps.corrupt_prompts[i].count("Box")
        labels = ps.metadata[i]["labels"]
        assert len(labels) == len(set(labels)) == n_boxes
        # the corrupt query label is absent from the corrupt context
        corrupt_words = split_words(ps.corrupt_prompts[i])
        assert corrupt_words.count(corrupt_words[-3]) == 1
        # the query label occurs exactly once before the query
        row = ps.clean[i, : ps.end[i] - 2]
        assert int((row == ps.clean[i, ps.positions["query_label"][i]]).sum()) == 1


def test_ioi_templates_same_length_and_groups(tok):
    one = make("ioi", tok, n=30, seed=0, template=4)
    assert len(set(one.lengths.tolist())) == 1 and {m["template"] for m in one.metadata} == {4}
    assert {m["order"] for m in one.metadata} == {"ABBA", "BABA"}
    same = make("ioi", tok, n=25, seed=0, same_length=True, variant="hard")
    assert len(same) == 25 and len(set(same.lengths.tolist())) == 1 and bool(same.attention_mask.all())
    mixed = make("ioi", tok, n=60, seed=0)
    groups = mixed.group_by_length()
    assert len(groups) > 1 and sum(len(g) for g in groups.values()) == 60
    for length, g in groups.items():
        assert g.clean.shape[1] == length and bool(g.attention_mask.all())
        check_prompt_set(g, tok, "ioi")
    biggest = mixed.same_length()
    assert len(biggest) == max(len(g) for g in groups.values())


def test_ioi_abc_corruption_and_hard_variant(tok):
    ps = make("ioi", tok, n=20, seed=2, order="ABBA")
    for i, meta in enumerate(ps.metadata):
        x, y, z = meta["corrupt_names"]
        assert len({x, y, z, meta["IO"], meta["S"]}) == 5
        for key, name in (("IO", x), ("S1", y), ("S2", z)):
            assert word_at(tok, ps.corrupt[i, ps.positions[key][i]]) == name
        assert ps.positions["IO"][i] < ps.positions["S1"][i] < ps.positions["S2"][i]
    hard = make("ioi", tok, n=20, seed=2, variant="hard")
    assert float(hard.lengths.float().mean()) > float(ps.lengths.float().mean()) + 10
    assert {m["distractor"] for m in hard.metadata} == {"IO", "S"}
    for prompt, meta in zip(hard.prompts, hard.metadata, strict=True):
        words = split_words(prompt)
        assert words.count(meta["IO"]) + words.count(meta["S"]) == 4


def test_colored_objects_mindiff_and_options(tok):
    ps = make("colored_objects", tok, n=20, seed=0)
    assert ps.options is not None and ps.options.shape == (20, 3)
    for i in range(20):
        diff = (ps.clean[i] != ps.corrupt[i]).nonzero().flatten().tolist()
        assert diff == [int(ps.positions["query_object"][i])]  # only the queried object differs
        opts = ps.options[i].tolist()
        assert int(ps.answer_ids[i]) in opts and int(ps.wrong_ids[i]) in opts and len(set(opts)) == 3


def test_context_prior_both_intents(tok):
    ps = make("context_prior", tok, n=20, seed=0)
    by_pair: dict[int, list[int]] = {}
    for i, m in enumerate(ps.metadata):
        by_pair.setdefault(m["pair_id"], []).append(i)
    assert len(by_pair) == 10
    for a, b in by_pair.values():
        ma, mb = ps.metadata[a], ps.metadata[b]
        assert {ma["intent"], mb["intent"]} == {"context", "prior"}
        assert ps.prompts[a] == ps.corrupt_prompts[b] and ps.prompts[b] == ps.corrupt_prompts[a]
        assert ps.answer_ids[a] == ps.wrong_ids[b] and ps.answer_ids[b] == ps.wrong_ids[a]
        ctx = a if ma["intent"] == "context" else b
        assert ps.metadata[ctx]["answer"] == ma["context"] != ma["prior"]
        # clean and corrupt differ in exactly the intent token
        assert (ps.clean[a] != ps.corrupt[a]).nonzero().flatten().tolist() == [int(ps.positions["intent"][a])]
    with pytest.raises(ValueError, match="multiple of 2"):
        make("context_prior", tok, n=5, seed=0)


@pytest.mark.parametrize("kind", ["positional", "object_value", "box_label_value"])
def test_desiderata_targets(tok, kind):
    base, source, target = desiderata(tok, kind, n=15, seed=0)
    assert len(base) == len(source) == 15 and target.shape == (15,)
    assert base.prompts == source.corrupt_prompts and source.prompts == base.corrupt_prompts
    assert torch.equal(base.lengths, source.lengths)
    assert bool((target != base.answer_ids).all())
    assert bool((target == source.answer_ids).all()) == (kind == "object_value")
    for i in range(15):
        b, s = base.metadata[i], source.metadata[i]
        assert not set(b["objects"]) & set(s["objects"])
        t = word_at(tok, target[i])
        if kind == "positional":
            assert t == b["objects"][s["query_index"]] and s["query_index"] != b["query_index"]
        elif kind == "object_value":
            assert t == s["objects"][s["query_index"]]
        else:
            j = b["labels"].index(s["labels"][s["query_index"]])
            assert j not in (b["query_index"], s["query_index"]) and t == b["objects"][j]
    with pytest.raises(ValueError, match="positional"):
        desiderata(tok, "label", n=2, seed=0)


def test_missing_answer_word_is_left_out_or_named():
    lacking = build_word_tokenizer([w for w in vocabulary() if w != "Blue"])
    ps = make("colored_objects", lacking, n=200, seed=0)  # the pool keeps the 7 colours it can answer with
    assert "blue" not in {c for m in ps.metadata for c in m["colors"]}
    check_prompt_set(ps, lacking, "colored_objects")
    with pytest.raises(ValueError, match="IOI names are single tokens"):
        make("ioi", _trained_tokenizer(300), n=4, seed=0)
    pair = [
        Pair(
            clean=Sample(prompt="Then, Mary gave it to", answer="Blue", spans={}),
            corrupt_prompt="Then, John gave it to",
            wrong="Mary",
        )
    ]
    with pytest.raises(ValueError, match="answer word 'Blue' is not a single known token"):
        build_prompt_set("x", lacking, iter([pair]), n=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, r"seed must be a non-negative int, got -1"),
        ({"seed": None}, r"seed must be a non-negative int, got None \(NoneType\)"),
        ({"seed": 1.0}, r"seed must be a non-negative int, got 1.0 \(float\)"),
        ({"seed": True}, r"seed must be a non-negative int, got True \(bool\)"),
        ({"n": 2.5}, r"n must be a positive int, got 2.5 \(float\)"),
        ({"n": "8"}, r"n must be a positive int, got '8' \(str\)"),
        ({"n": 0}, r"n must be a positive int, got 0"),
        ({"n": True}, r"n must be a positive int, got True \(bool\)"),
        ({"n_boxes": 2.0}, r"n_boxes must be an int in \[2, 22\], got 2.0"),
    ],
)
def test_seed_and_n_are_validated(tok, kwargs, match):
    args = {"n": 4, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        make("entity_tracking", tok, **args)
    if "n_boxes" not in kwargs:
        with pytest.raises(ValueError, match=match):
            desiderata(tok, "positional", **args)


def test_bad_names_and_options(tok):
    with pytest.raises(ValueError, match="ioi.*colored_objects.*entity_tracking.*context_prior"):
        make("iot", tok, n=2, seed=0)
    with pytest.raises(ValueError, match="n_boxes"):
        make("entity_tracking", tok, n=2, seed=0, boxes=3)
    with pytest.raises(ValueError, match="'normal', 'hard'"):
        make("ioi", tok, n=2, seed=0, variant="harder")
    with pytest.raises(ValueError, match="n_boxes"):
        make("entity_tracking", tok, n=2, seed=0, n_boxes=1)
    with pytest.raises(ValueError, match="split"):
        make("colored_objects", tok, n=2, seed=0, split="val")
    with pytest.raises(ValueError, match="format"):
        make("context_prior", tok, n=2, seed=0, format="chat")


def _pair(prompt: str, corrupt: str, answer: str, wrong: str) -> list[Pair]:
    text, spans = render(prompt, {"N": "Mary"})
    return [
        Pair(
            clean=Sample(prompt=text, answer=answer, spans={"name": spans["N"][0]}),
            corrupt_prompt=corrupt,
            wrong=wrong,
        )
    ]


def test_misaligned_or_same_answer_pairs_are_rejected(tok):
    with pytest.raises(ValueError, match="differ in token length.*John gave it to the"):
        build_prompt_set(
            "x", tok, iter([_pair("{N} gave it to", "John gave it to the", "John", "Mary")]), n=1
        )
    with pytest.raises(ValueError, match="1 of 1 prompts have the same answer"):
        build_prompt_set("x", tok, iter([_pair("{N} gave it to", "John gave it to", "John", "John")]), n=1)
    ps = build_prompt_set(
        "x", tok, iter([_pair("Then, {N} gave it to", "Then, John gave it to", "John", "Tom")]), n=1
    )
    assert ps.positions["name"].tolist() == [3] and ps.positions["END"].tolist() == [6]


def test_prompt_set_subset_to_and_validation(tok):
    ps = make("ioi", tok, n=10, seed=0)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4]] = True
    for sub in (ps.subset(mask), ps.subset([1, 4]), ps.subset(torch.tensor([1, 4]))):
        assert sub.prompts == [ps.prompts[1], ps.prompts[4]]
        assert sub.clean.shape[1] == int(sub.lengths.max())
        assert torch.equal(sub.positions["IO"], ps.positions["IO"][[1, 4]])
    assert len(ps.subset(slice(2, 5))) == 3 and len(ps.subset([])) == 0
    assert ps.to("cpu").clean.device.type == "cpu"
    with pytest.raises(ValueError, match="answer_ids"):
        PromptSet(**{**ps.__dict__, "answer_ids": ps.answer_ids[:3]})
    with pytest.raises(ValueError, match="last real token"):
        PromptSet(**{**ps.__dict__, "end": ps.end + 1})


def test_prompt_set_position_specs(tok):
    ps = make("ioi", tok, n=6, seed=0)
    assert torch.equal(ps.position("S1"), ps.positions["S1"])
    assert torch.equal(ps.position("S1+1"), ps.positions["S1"] + 1)
    assert torch.equal(ps.position("END-1"), ps.end - 1)
    assert torch.equal(ps.position(2), torch.full((6,), 2))
    with pytest.raises(ValueError, match=r"has positions \[.*'END'.*'S1'"):
        ps.position("S9")
    with pytest.raises(ValueError, match="falls outside"):
        ps.position("END+1")
    with pytest.raises(ValueError, match="falls outside"):
        ps.position(-1)
