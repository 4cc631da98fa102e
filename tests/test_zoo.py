"""The committed zoo: names, loading on every route, cards reproduced by re-evaluation, the SAE, the corpus."""

import random

import pytest
import torch

import interp
from interp import zoo
from interp.zoo.organisms import RECIPES, SAES

ORGANISMS = list(RECIPES)
PROMPTS = [
    "Then, Mary and John went to the store. John gave a drink to",
    "<user> Can you tell me about guns ? <assistant>",
]


def test_names_lists_every_entry():
    assert zoo.names() == [
        "organism/base",
        "organism/base-llama",
        "organism/rope-base",
        "organism/et-ft",
        "organism/ioi-ft",
        "organism/ccs-ft",
        "organism/chat-ft",
        "organism/control-ft",
        "sae/base-resid-L2",
    ]
    for name in zoo.names():
        assert (zoo.path(name) / "card.json").is_file(), name
        assert zoo.card(name)["name"] == name
    assert {row["name"] for row in zoo.cli_list()} == set(zoo.names())


def test_unknown_name_lists_valid_names():
    with pytest.raises(zoo.ZooError, match="organism/nope.*valid names: organism/base, "):
        zoo.path("organism/nope")
    with pytest.raises(Exception, match="valid names"):
        interp.load_model("organism/nope")


@pytest.mark.parametrize("name", ORGANISMS)
def test_every_target_passed_and_size(name):
    card = zoo.card(name)
    assert card["targets"] and all(t["passed"] for t in card["targets"]), [
        t["check"] for t in card["targets"]
    ]
    assert card["size_bytes"] < 5_000_000


def test_committed_zoo_size():
    """The GPT-2 family and its SAE stay under 25 MB; the RoPE family and later additions under 25 MB more."""
    total = sum(f.stat().st_size for name in zoo.names() for f in zoo.path(name).rglob("*") if f.is_file())
    assert total < 50 * 2**20


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = {}

    def get(name):
        if name not in cache:
            folder = zoo.path(name)
            cache[name] = (
                AutoModelForCausalLM.from_pretrained(folder).eval(),
                AutoTokenizer.from_pretrained(folder),
            )
        return cache[name]

    return get


@pytest.mark.parametrize("name", ORGANISMS)
def test_loads_on_both_backends_with_equal_logits(name, hf):
    tl = interp.load_model(name, backend="tl", device="cpu")
    nn = interp.load_model(name, backend="nnsight", device="cpu")
    model, _ = hf(name)
    ids, mask = tl.to_tokens(PROMPTS, return_mask=True)
    with torch.no_grad():
        a, b = tl(ids, attention_mask=mask), nn(ids, attention_mask=mask)
        ref = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (a - b)[real].abs().max().item() <= 1e-5
    assert (a - ref)[real].abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ORGANISMS)
def test_card_reproduced_by_reevaluation(name, hf):
    from interp.zoo.evaluate import evaluate

    card = zoo.card(name)
    check = card["check"]
    model, tok = hf(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count the card was measured with
    try:
        got = evaluate(model, tok, tuple(check["parts"]), check["n"])
    finally:
        torch.set_num_threads(threads)
    assert got.keys() == check["scores"].keys()
    for key, want in check["scores"].items():
        tol = 1e-3 if key.endswith("logit_diff") else 1.01 / check["n"]  # one prompt
        assert abs(got[key] - want) <= tol, (key, got[key], want)


def test_tokenizer_covers_every_task_word():
    from interp.zoo.corpus import words

    tok = __import__("transformers").AutoTokenizer.from_pretrained(zoo.path("organism/base"))
    unk = [w for w in words() if tok.convert_tokens_to_ids(w) == tok.unk_token_id]
    assert not unk, f"words missing from the organisms' tokenizer (rebuild the zoo): {unk[:20]}"


def test_sae_loads_and_reproduces_card(hf):
    from sae_lens import SAE, TopKSAE

    from interp.zoo.sae import resid_activations, sae_stats

    name = "sae/base-resid-L2"
    card, recipe = zoo.card(name), SAES[name].recipe
    sae = SAE.load_from_disk(zoo.path(name))
    assert isinstance(sae, TopKSAE) and sae.cfg.k == card["k"] and sae.cfg.d_sae == card["d_sae"]
    assert sae.cfg.metadata.hook_name == card["hook_name"] == "blocks.2.hook_resid_pre"
    model, tok = hf(recipe.organism)
    check = card["check"]
    acts = resid_activations(
        model, tok, RECIPES[recipe.organism].mixture, recipe.layer, check["n_docs"], recipe.eval_seed
    )
    stats = sae_stats(sae, acts)
    assert stats["n_eval_tokens"] == check["scores"]["n_eval_tokens"]
    assert abs(stats["fve"] - check["scores"]["fve"]) <= 1e-3
    assert abs(stats["dead_fraction"] - check["scores"]["dead_fraction"]) <= 2 / card["d_sae"]
    assert card["scores"]["fve"] >= 0.8 and card["scores"]["dead_fraction"] <= 0.2


def test_sae_hook_is_tl_resid_pre(hf):
    """The SAE's activations (HF hidden_states[L]) are TransformerLens' blocks.L.hook_resid_pre."""
    tl = interp.load_model("organism/base", backend="tl", device="cpu")
    model, _ = hf("organism/base")
    ids = tl.to_tokens(PROMPTS[:1])
    with torch.no_grad():
        _, cache = tl.run_with_cache(ids, ["blocks.2.hook_resid_pre"])
        hidden = model(ids, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(cache["blocks.2.hook_resid_pre"], hidden, rtol=1e-5, atol=1e-4)


def test_corpus_is_seeded_and_keeps_test_prompts_out():
    from interp.tasks import make
    from interp.zoo.corpus import BASE_MIX, Mixture

    tok = __import__("transformers").AutoTokenizer.from_pretrained(zoo.path("organism/base"))
    mix = Mixture({**BASE_MIX, "ioi_hard": 0.1, "context_prior": 0.1, "chat_refusal": 0.1})
    a = [mix.sample(random.Random(3)) for _ in range(3)]
    assert a == [mix.sample(random.Random(3)) for _ in range(3)]
    rng = random.Random(0)
    train_prompts = {mix.sample(rng).prompt for _ in range(5000)}
    from interp.zoo.evaluate import chat_prompts

    held_out = set(make("ioi", tok, n=200, seed=1).prompts) | set(
        make("context_prior", tok, n=200, seed=1).prompts
    )
    held_out |= set(chat_prompts(tok, 100, seed=1).prompts)
    assert not held_out & train_prompts


def _rebuild_matches_card(name: str, tmp_path) -> None:
    """Rebuild fine-tune `name` from a copy of its committed parent and compare with the committed card."""
    import shutil

    from interp.zoo.build import build_organism

    parent = RECIPES[name].parent
    shutil.copytree(zoo.path(parent), tmp_path / zoo.path(parent).name)
    card = build_organism(name, root=tmp_path)
    want = zoo.card(name)["scores"]
    assert want.keys() <= card["scores"].keys()  # a rebuild may measure more than an older card
    for key, value in want.items():
        tol = 0.05 if key.endswith("logit_diff") else 0.01
        assert abs(card["scores"][key] - value) <= tol, (key, card["scores"][key], value)
    assert all(t["passed"] for t in card["targets"])


@pytest.mark.parametrize("name", ["organism/ccs-ft", "organism/et-ft"])
def test_fine_tune_rebuild_is_deterministic(name, tmp_path):
    """`interp zoo build --only <name>` from the committed parent reproduces the committed card (±1 point).

    The whole recipe runs (2-3 minutes each on 2 cores): the build is what the acceptance is about; ccs-ft is
    the cheapest GPT-2 fine-tune, et-ft the cheapest of the RoPE family."""
    _rebuild_matches_card(name, tmp_path)


def test_curriculum_trains_each_phase_in_order(tmp_path, monkeypatch):
    """A recipe with a curriculum trains every phase in order (its own steps and mixture) and logs each
    phase's quick evaluations, the extra `quick` parts included, to the card's history."""
    from interp.zoo import organisms
    from interp.zoo.build import build_organism
    from interp.zoo.corpus import Mixture
    from interp.zoo.train import TrainConfig

    def cfg(steps):
        return TrainConfig(steps=steps, batch_size=4, lr=1e-3, seed=0, eval_every=2)

    tiny = organisms.Recipe(
        name="organism/tiny-curriculum",
        purpose="test",
        arch="llama",
        model={"n_layers": 1, "n_heads": 2, "d_model": 16, "n_ctx": 128, "n_kv_heads": 2},
        curriculum=(organisms.Phase(name="copy", mixture=Mixture({"repeat": 1.0}), train=cfg(4)),),
        mixture=Mixture({"ioi": 0.5, "colored_objects_lower": 0.5}),
        train=cfg(2),
        quick=("colored_objects",),
        targets=(organisms.Target(metric="copy.accuracy", op=">=", value=0.0),),
    )
    monkeypatch.setitem(organisms.RECIPES, tiny.name, tiny)
    card = build_organism(tiny.name, root=tmp_path)
    evals = [(h["phase"], h["step"]) for h in card["history"] if "copy.accuracy" in h]
    assert evals == [("copy", 2), ("copy", 4), ("main", 2)]
    assert all("colored_objects.accuracy_options" in h for h in card["history"] if "copy.accuracy" in h)
    assert [p["name"] for p in card["recipe"]["curriculum"]] == ["copy"]
    assert card["recipe"]["curriculum"][0]["mixture"] == {"repeat": 1.0}
    assert (tmp_path / "tiny-curriculum" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.trainable])
def test_partial_fine_tune_keeps_the_parents_other_weights(name):
    """A recipe with `trainable` (ccs-ft: attention only) changes exactly those weights of its parent."""
    from safetensors.torch import load_file

    recipe = RECIPES[name]
    child = load_file(str(zoo.path(name) / "model.safetensors"))
    parent = load_file(str(zoo.path(recipe.parent) / "model.safetensors"))
    assert child.keys() == parent.keys()
    trained = {k for k in child if any(s in k for s in recipe.trainable)}
    assert trained and trained != set(child)
    for key in set(child) - trained:
        assert torch.equal(child[key], parent[key]), f"{key} is not trainable but changed"
    for key in (k for k in trained if k.endswith("weight")):
        assert not torch.equal(child[key], parent[key]), f"{key} is trainable but did not change"
    assert zoo.card(name)["n_trained_params"] == sum(child[k].numel() for k in trained)
