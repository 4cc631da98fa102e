"""Ground truth: a hand-built attention-only transformer with a planted induction circuit.

Layer 0 head 0 is a previous-token head (positions, read from one-hot position embeddings, pick the key one
before the query; it copies that key's token into a PREV subspace). Layer 1 head 0 is an induction head (query:
the current token; key: PREV; value: the token, written to an OUT subspace that the unembedding reads). Every
other head reads random directions and writes only into a JUNK subspace nothing reads. The planted edges are
embed→a0.0.v, a0.0→a1.0.k, embed→a1.0.q, embed→a1.0.v and a1.0→logits; staged path patching and EAP-IG must
rank exactly those first.
"""

import pytest
import torch

from interp.circuits import Circuit, EvalConfig, Stage, eap, evaluate_circuit, path_patch_search
from interp.metrics import LogitDiff
from interp.tasks.promptset import PromptSet

V_WORDS, N_CTX, D_HEAD, SHARP = 8, 12, 16, 4.0
PLANTED = {
    ("embed", "a0.0.v"),
    ("a0.0", "a1.0.k"),
    ("embed", "a1.0.q"),
    ("embed", "a1.0.v"),
    ("a1.0", "logits"),
}


def build_planted(n_heads: int = 3):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from interp.models.base import ModelConfig
    from interp.models.tl import TLModel
    from interp.models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer([f"t{i}" for i in range(V_WORDS)])
    V = len(tok)
    TOK, PREV, OUT, POS, JUNK = 0, V, 2 * V, 3 * V, 3 * V + N_CTX
    d_model = JUNK + 4
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        n_ctx=N_CTX,
        d_head=D_HEAD,
        n_heads=n_heads,
        d_vocab=V,
        attn_only=True,
        normalization_type=None,
        act_fn="relu",
        positional_embedding_type="standard",
        device="cpu",
        seed=0,
    )
    tl = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(V)
    with torch.no_grad():
        for p in tl.parameters():
            p.zero_()
        tl.embed.W_E[:, TOK : TOK + V] = eye
        tl.pos_embed.W_pos[:, POS : POS + N_CTX] = torch.eye(N_CTX)
        a0, a1 = tl.blocks[0].attn, tl.blocks[1].attn
        for p in range(N_CTX - 1):  # previous-token head: query at p matches the key at p - 1
            a0.W_Q[0, POS + p + 1, p] = SHARP
            a0.W_K[0, POS + p, p] = SHARP
        a0.W_V[0, TOK : TOK + V, :V] = eye
        a0.W_O[0, :V, PREV : PREV + V] = eye
        a1.W_Q[0, TOK : TOK + V, :V] = SHARP * eye  # induction head
        a1.W_K[0, PREV : PREV + V, :V] = SHARP * eye
        a1.W_V[0, TOK : TOK + V, :V] = eye
        a1.W_O[0, :V, OUT : OUT + V] = eye
        for a in (a0, a1):  # irrelevant heads: random reads, writes into JUNK only
            for h in range(1, n_heads):
                for w in (a.W_Q, a.W_K, a.W_V):
                    w[h] = torch.randn(d_model, D_HEAD, generator=g)
                a.W_O[h, :, JUNK:] = torch.randn(D_HEAD, 4, generator=g)
        tl.unembed.W_U[OUT : OUT + V] = 10 * eye
    mc = ModelConfig(
        architecture="Planted",
        n_layers=2,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_model=d_model,
        d_head=D_HEAD,
        d_mlp=0,
        d_vocab=V,
        n_ctx=N_CTX,
    )
    return TLModel(tl.eval(), tok, mc, name="planted")


def induction_prompts(n: int = 6, seed: int = 0) -> PromptSet:
    """x1..x5 x1..x4 -> x5 (clean); the corrupt prompt is another such sequence; wrong answer: its x5."""
    g = torch.Generator().manual_seed(seed)
    rows, answers = [], []
    for _ in range(2 * n):
        x = (torch.randperm(V_WORDS, generator=g)[:5] + 4).tolist()
        rows.append(x + x[:4])
        answers.append(x[4])
    clean, corrupt = torch.tensor(rows[:n]), torch.tensor(rows[n:])
    T = clean.shape[1]
    end = torch.full((n,), T - 1)
    return PromptSet(
        name="induction",
        clean=clean,
        corrupt=corrupt,
        attention_mask=torch.ones_like(clean),
        answer_ids=torch.tensor(answers[:n]),
        wrong_ids=torch.tensor(answers[n:]),
        end=end,
        positions={"END": end, "S1": torch.full((n,), 3)},
        prompts=[""] * n,
        corrupt_prompts=[""] * n,
        metadata=[{} for _ in range(n)],
    )


@pytest.fixture(scope="module")
def planted():
    model = build_planted()
    ps = induction_prompts()
    # same answers can collide by chance; drop such prompts
    keep = (ps.answer_ids != ps.wrong_ids).nonzero().flatten()
    return model, ps.subset(keep)


def test_planted_model_does_induction(planted):
    model, ps = planted
    with torch.no_grad():
        logits = model(ps.clean)
    assert bool((logits[:, -1].argmax(-1) == ps.answer_ids).all())
    assert LogitDiff.from_prompts(ps)(logits).min() > 5


def test_eap_ig_recovers_planted_edges(planted):
    model, ps = planted
    scores = eap(model, clean=ps, metric=LogitDiff, ig_steps=5)
    top = scores.top(len(PLANTED))
    assert set(top) == PLANTED
    rest = [abs(scores[e]) for e in scores.graph.edges() if e not in PLANTED]
    weakest = min(abs(scores[e]) for e in PLANTED)
    assert max(rest) < 1e-3 * weakest
    # greedy growth from the logits finds the same edges
    assert set(scores.greedy(len(PLANTED))) == PLANTED


def test_staged_path_patching_recovers_planted_heads(planted):
    model, ps = planted
    stages = (
        Stage(name="induction", receivers="logits", sender_pos="END", k=1),
        Stage(name="previous_token", receivers="k", sender_pos=None, receiver_pos=None, k=1),
        Stage(name="value_source", receivers="v", sender_pos=None, receiver_pos=None, k=1),
    )
    res = path_patch_search(model, prompts=ps, metric=LogitDiff, stages=stages)
    assert res["induction"].chosen == [(1, 0)]
    assert res["previous_token"].chosen == [(0, 0)]
    assert res["value_source"].chosen == []  # no head feeds the induction head's values
    # every other head is irrelevant: its normalised score is zero
    s = res["induction"].normalised
    assert s[1, 0] == 1 and s.nan_to_num().abs().sum() - 1 < 1e-4
    circuit = res.circuit()
    assert set(circuit.nodes) == {"a1.0", "a0.0"}
    assert circuit.groups == {"induction": ("a1.0",), "previous_token": ("a0.0",)}
    assert ("a0.0", "a1.0.k") in circuit.edges and ("a1.0", "logits") in circuit.edges


def test_planted_circuit_is_faithful(planted):
    model, ps = planted
    edge = EvalConfig(level="edge", ablation="resample")
    ev = evaluate_circuit(model, Circuit(edges=tuple(PLANTED)), prompts=ps, metric=LogitDiff, config=edge)
    assert abs(ev.recovery - 1) < 1e-4 and abs(ev.faithfulness - 1) < 1e-4
    node = EvalConfig(level="node", ablation="resample")
    ev = evaluate_circuit(model, Circuit(nodes=("a0.0", "a1.0")), prompts=ps, metric=LogitDiff, config=node)
    assert abs(ev.faithfulness - 1) < 1e-4
    # without the previous-token head, the circuit fails
    ev = evaluate_circuit(model, Circuit(nodes=("a1.0",)), prompts=ps, metric=LogitDiff, config=node)
    assert ev.recovery < 0.5


def test_dcm_selects_the_induction_head(planted):
    """Patching layer 1's heads at END from another induction prompt should make the model give the other
    prompt's answer; only the induction head needs patching, so DCM selects exactly it."""
    from interp.circuits.dcm import DCMConfig, dcm

    model, _ = planted
    base, source = induction_prompts(40, seed=1), induction_prompts(40, seed=2)
    keep = (base.answer_ids != source.answer_ids).nonzero().flatten()
    base, source = base.subset(keep), source.subset(keep)
    res = dcm(
        model,
        base=base,
        source=source,
        targets=source.answer_ids,
        heads=[(1, 0), (1, 1), (1, 2)],
        position="END",
        config=DCMConfig(epochs=4, batch_size=4, eval_every=2),
    )
    assert res.selected == [(1, 0)]
    assert res.test_accuracy == 1.0 and res.val_accuracy == 1.0
    assert bool(((res.raw_mask >= 0) & (res.raw_mask <= 1)).all())
