"""CMAP (Prakash et al. 2024): self-patching is a no-op; patching everything that differs reproduces the sender.
Circuit evaluation across models (`interp.circuits`' node-level mean ablation) and Prakash's random circuits."""

import json

import pytest
import torch
from helpers import interrupted_then_resumed

from interp import load_model
from interp.circuits import Circuit, EvalConfig, circuit_values, random_circuits
from interp.finetuning import PairMismatchError, circuit_groups, cmap_input, cmap_output, cmap_sweep
from interp.finetuning.pair import perturbed_twin
from interp.metrics import LogitDiff
from interp.sites import SiteError
from interp.tasks.promptset import PromptSet

ARCHS = ["gpt2", "llama"]
QKV = {"gpt2": ("attn.c_attn",), "llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
BLOCKS = {"gpt2": "transformer.h.", "llama": "model.layers."}
W_O = {"gpt2": ".attn.c_proj.", "llama": ".self_attn.o_proj."}  # shared by the 'blocks' twins
B, T = 3, 7


@pytest.fixture(scope="module")
def models(tiny_dirs, tmp_path_factory):
    """Base model plus two twins per arch: 'qkv' (only W_Q/W_K/W_V differ) and 'blocks' (every block weight
    differs except the attention output projection W_O, b_O)."""
    root = tmp_path_factory.mktemp("cmap")
    folders = {"base": tiny_dirs}
    folders["qkv"] = {
        a: perturbed_twin(
            tiny_dirs[a],
            root / f"qkv-{a}",
            scale=0.2,
            select=lambda n, a=a: any(f".{q}." in n for q in QKV[a]),
        )
        for a in ARCHS
    }
    folders["blocks"] = {
        a: perturbed_twin(
            tiny_dirs[a],
            root / f"blocks-{a}",
            scale=0.05,
            select=lambda n, a=a: n.startswith(BLOCKS[a]) and W_O[a] not in n,
        )
        for a in ARCHS
    }
    cache = {}

    def get(kind, arch, backend="tl"):
        if (kind, arch, backend) not in cache:
            cache[kind, arch, backend] = load_model(folders[kind][arch], backend=backend, device="cpu")
        return cache[kind, arch, backend]

    return get


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 25, (B, T), generator=g)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    end = mask.sum(1) - 1
    return PromptSet(
        name="toy",
        clean=ids,
        corrupt=ids.clone(),
        attention_mask=mask,
        answer_ids=torch.randint(3, 25, (B,), generator=g),
        wrong_ids=torch.randint(3, 25, (B,), generator=g),
        end=end,
        positions={"S2": torch.tensor([2, 3, 2])},
        prompts=[""] * B,
        corrupt_prompts=[""] * B,
        metadata=[{}] * B,
    )


def all_heads(model):
    return tuple(f"a{layer}.{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads))


def groups(*specs):
    """A Circuit from (group name, nodes, position or None for every position) triples."""
    return Circuit(
        nodes=tuple(n for _, nodes, _ in specs for n in nodes),
        groups={g: tuple(nodes) for g, nodes, _ in specs},
        positions={n: pos for _, nodes, pos in specs if pos is not None for n in nodes},
    )


GROUPS = groups(("movers", ("a1.0", "a1.2"), "END"), ("s2", ("a0.1",), "S2"), ("mlp", ("m0", "a0.3"), None))
HEADS_ONLY = groups(("movers", ("a1.0", "a1.2"), "END"), ("s2", ("a0.1",), "S2"))


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_self_patching_is_a_noop(models, prompts, arch, backend):
    m = models("base", arch, backend)
    out = cmap_output(m, m, prompts, GROUPS, metric=LogitDiff)
    assert out.groups == ("movers", "s2", "mlp", "all groups")
    assert torch.allclose(out.values, out.receiver.expand_as(out.values), atol=1e-5)
    inp = cmap_input(m, m, prompts, HEADS_ONLY, metric=LogitDiff)
    assert torch.allclose(inp.values, inp.receiver.expand_as(inp.values), atol=1e-5)
    # prompts of different lengths: positions by role (a column per named position, one token per prompt)
    sweep = cmap_sweep(m, m, prompts, component="resid_pre", metric=LogitDiff, positions=["S2", "END"])
    assert sweep.labels["pos"] == ["S2", "END"]
    assert torch.allclose(sweep.scores, torch.full_like(sweep.scores, out.receiver.mean().item()), atol=1e-5)


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_cmap_of_every_head_reproduces_sender(models, prompts, arch, backend):
    """Twins that differ only in W_Q/W_K/W_V: every head's z at every position from the sender = the sender."""
    base, ft = models("base", arch, backend), models("qkv", arch, backend)
    circuit = groups(("all heads", all_heads(base), None), ("one head", ("a0.0",), "END"))
    res = cmap_output(base, ft, prompts, circuit, metric=LogitDiff)
    assert (res.sender - res.receiver).abs().min() > 1e-3  # the twins really differ
    assert torch.allclose(res.values[0], res.sender, atol=1e-4)
    assert not torch.allclose(res.values[1], res.sender, atol=1e-4)
    frame = res.to_frame()
    assert frame.loc[0, "gap_closed"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_cmap_of_all_heads_and_mlps_reproduces_sender(models, prompts, arch):
    """Twins whose blocks differ but for W_O (embeddings and unembedding shared): every head's z and every MLP's
    output everywhere from the sender = the sender."""
    base, ft = models("base", arch), models("blocks", arch)
    mlps = tuple(f"m{layer}" for layer in range(base.cfg.n_layers))
    res = cmap_output(
        base, ft, prompts, groups(("everything", all_heads(base) + mlps, None)), metric=LogitDiff
    )
    assert (res.sender - res.receiver).abs().min() > 1e-3
    assert torch.allclose(res.values[0], res.sender, atol=1e-4)


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_input_cmap_of_every_head_at_end_reproduces_sender(models, prompts, arch, backend):
    """q at END and k/v at 0..END of every head from a q/k/v-only twin: the END prediction is the sender's."""
    base, ft = models("base", arch, backend), models("qkv", arch, backend)
    group = groups(("all heads", all_heads(base), "END"))
    res = cmap_input(base, ft, prompts, group, metric=LogitDiff, kv_through_position=True)
    assert torch.allclose(res.values[0], res.sender, atol=1e-4)
    before = cmap_input(base, ft, prompts, group, metric=LogitDiff)  # the paper's k/v: strictly before END
    res_q = cmap_input(base, ft, prompts, group, metric=LogitDiff, patch=("q",), kv_through_position=True)
    for partial in (before, res_q):
        assert not torch.allclose(partial.values[0], res.sender, atol=1e-3)


@pytest.mark.parametrize("engine", ["tl", "generic"])
def test_component_sweep_oracles(models, prompts, engine):
    """Block-only twins: resid_pre at layer 0 changes nothing; the last resid_post at END gives the sender."""
    base, ft = models("base", "gpt2"), models("blocks", "gpt2")
    same_len = prompts.subset([0, 1])
    pre = cmap_sweep(base, ft, same_len, component="resid_pre", metric=LogitDiff, engine=engine)
    assert torch.allclose(pre.scores[0], torch.full((T,), pre.baseline["clean"]), atol=1e-5)
    post = cmap_sweep(base, ft, same_len, component="resid_post", metric=LogitDiff, engine=engine)
    assert post.scores[-1, -1].item() == pytest.approx(post.baseline["corrupt"], abs=1e-4)
    z = cmap_sweep(base, ft, same_len, component="z", metric=LogitDiff, positions="all", engine=engine)
    assert z.scores.shape == (base.cfg.n_layers, base.cfg.n_heads) and z.axes == ("layer", "head")


def test_circuit_evaluation_across_models(models, prompts):
    """A circuit of model A evaluated inside model B: the complement mean-ablated per position over real tokens."""
    base, ft = models("base", "gpt2"), models("qkv", "gpt2")
    mean = EvalConfig(ablation="mean", mean_by=None)
    everything = groups(("all", all_heads(base), None))
    small = groups(("A", ("a1.0",), "END"), ("B", ("a0.1",), "S2"))
    values = circuit_values(base, [everything, small], prompts=prompts, metric=LogitDiff, config=mean)
    with torch.no_grad():
        full = LogitDiff.from_prompts(prompts)(base(prompts.clean, attention_mask=prompts.attention_mask))
    torch.testing.assert_close(values[0], full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(values[1], full, atol=1e-3)
    # one prompt: its own mean is itself, so ablating with it changes nothing
    one = prompts.subset([0])
    v1 = circuit_values(base, [small], prompts=one, metric=LogitDiff, config=mean)
    with torch.no_grad():
        torch.testing.assert_close(v1[0], LogitDiff.from_prompts(one)(base(one.clean)), atol=1e-5, rtol=1e-5)
    # the base model's circuit evaluated inside the fine-tune
    in_ft = circuit_values(ft, [everything], prompts=prompts, metric=LogitDiff, config=mean)
    with torch.no_grad():
        ft_full = LogitDiff.from_prompts(prompts)(ft(prompts.clean, attention_mask=prompts.attention_mask))
    torch.testing.assert_close(in_ft[0], ft_full, atol=1e-5, rtol=1e-5)


def test_masked_mean_ablation_matches_a_hand_computed_oracle(models, prompts):
    """Padded prompts: each position's ablation value is the mean over the prompts with a real token there."""
    from interp.circuits.evaluate import _group_mean

    x = torch.randn(1, B, T, 2)
    mask = prompts.attention_mask
    got = _group_mean(x, None, mask)[0]
    for t in range(T):
        rows = [b for b in range(B) if mask[b, t]]
        expect = x[0, rows, t].mean(0)
        for b in range(B):
            torch.testing.assert_close(got[b, t], expect)


def test_random_circuits_per_group_keep_group_sizes_and_positions(models):
    base = models("base", "gpt2")
    small = groups(("A", ("a1.0", "a1.1"), "END"), ("B", ("a0.1",), "S2"))
    rand = random_circuits(base, small, n=3, seed=0, per_group=True)
    for r in rand:
        assert [len(r.groups[g]) for g in ("A", "B")] == [2, 1]
        for g, pos in (("A", "END"), ("B", "S2")):
            assert all(pos in r.kept_at(n) for n in r.groups[g])
    # the same head drawn for two groups is kept at both positions
    many = random_circuits(
        base, groups(("A", all_heads(base), "END"), ("B", ("a0.1",), "S2")), seed=1, per_group=True
    )
    drawn = many[0].groups["B"][0]
    assert set(many[0].kept_at(drawn)) == {"END", "S2"}
    assert [g.name for g in circuit_groups(small)] == ["A", "B"]


def test_errors_before_compute(models, prompts, tiny_dirs, tmp_path):
    from interp.models.tiny import build_tiny_checkpoint
    from interp.models.tokenizer import build_word_tokenizer

    base = models("base", "gpt2")
    other = load_model(
        build_tiny_checkpoint("gpt2", tmp_path / "o", build_word_tokenizer(["a", "b"]), n_layers=3),
        device="cpu",
    )
    with pytest.raises(PairMismatchError) as err:
        cmap_output(base, other, prompts, GROUPS, metric=LogitDiff)
    assert "receiver" in str(err.value) and "layers" in str(err.value) and "vocabulary" in str(err.value)
    with pytest.raises(SiteError, match="head 9"):
        cmap_output(base, base, prompts, groups(("x", ("a0.9",), None)), metric=LogitDiff)
    with pytest.raises(ValueError, match="IO"):
        cmap_output(base, base, prompts, groups(("x", ("a0.1",), "IO")), metric=LogitDiff)
    with pytest.raises(ValueError, match="no head or MLP"):
        cmap_output(base, base, prompts, Circuit(nodes=("a0.1",), groups={"x": ()}), metric=LogitDiff)
    with pytest.raises(ValueError, match="MLPs"):
        cmap_input(base, base, prompts, groups(("mlp", ("m0", "a0.3"), None)), metric=LogitDiff)
    with pytest.raises(ValueError, match="one position per group"):
        cmap_input(base, base, prompts, groups(("all", ("a0.3",), None)), metric=LogitDiff)


def test_finetune_cmap_experiment_end_to_end(organism_like, tmp_path, monkeypatch):
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")  # no browser start-up for static images
    config = {
        "experiment": "finetune_cmap",
        "base": str(organism_like["base"]),
        "finetuned": str(organism_like["ft"]),
        "n_prompts": 8,
        "group_sizes": [1, 1, 1],
        "n_random": 1,
    }
    res = run_experiment(config, tmp_path / "run")
    for key in (
        "base_acc",
        "ft_acc",
        "base_circuit_faithfulness",
        "base_circuit_acc_in_ft",
        "cmap_best_group",
        "cmap_base_acc_after",
    ):
        assert key in res
    assert res["cmap_best_group"] in ("name movers", "S-inhibition", "induction")
    assert (tmp_path / "run" / "tables" / "cmap.csv").exists()
    assert run_experiment(config, tmp_path / "run") == res
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["status"] == "finished" and prov["steps_run"] == [] and prov["steps_skipped"]
    killed, done, _ = interrupted_then_resumed(config, tmp_path / "killed", after_steps=2)
    assert killed == res and done == ["accuracy", "circuit"]


def test_finetune_cmap_entity_tracking_end_to_end(organism_like, tmp_path, monkeypatch):
    """The entity-tracking configuration (Prakash et al.'s four groups, DCM, overlap, completion) runs, writes the
    finetune_cmap keys and its own, and the completed circuit keeps every staged head."""
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")
    config = {
        "experiment": "finetune_cmap",
        "task": "entity_tracking",
        "metric": "top1",
        "base": str(organism_like["base"]),
        "finetuned": str(organism_like["ft"]),
        "n_prompts": 8,
        "n_boxes": 4,
        "circuit_n_boxes": 3,
        "group_sizes": [1, 1, 1, 1],
        "complete_accuracy": 0.5,
        "n_random": 1,
        "n_dcm": 8,
    }
    res = run_experiment(config, tmp_path / "run")
    for key in (
        "base_acc",
        "ft_acc",
        "base_circuit_faithfulness",
        "base_circuit_acc_in_ft",
        "cmap_best_group",
        "cmap_base_acc_after",
        "staged_circuit_faithfulness",
        "circuit_overlap",
        "dcm_test_accuracy",
    ):
        assert key in res, key
    groups = ("value_fetcher", "position_transmitter", "position_detector", "structure_reader")
    assert res["cmap_best_group"] in groups
    assert res["dcm_test_accuracy"] and set(res["dcm_test_accuracy"]) <= {
        f"{g}/{d}" for g in groups for d in ("positional", "object_value", "box_label_value")
    }
    staged = {h for part in res["circuit_heads"].split("; ") for h in part.split(": ")[1].split()}
    completed = json.loads((tmp_path / "run" / "steps" / "completed_circuit.json").read_text())
    assert {n.removeprefix("a") for n in completed["nodes"]} >= staged
    assert res["circuit_size"] == len(completed["nodes"])
    assert 0 <= res["circuit_overlap"] <= 1


def test_finetune_cmap_group_sizes_follow_the_task():
    from interp.config import ConfigError
    from interp.experiments.finetune_cmap import FinetuneCMAPConfig

    with pytest.raises(ConfigError, match="entity_tracking has 4 head groups"):
        FinetuneCMAPConfig(task="entity_tracking", group_sizes=(3, 2, 2))
    with pytest.raises(ConfigError, match="n_boxes"):
        FinetuneCMAPConfig(task="entity_tracking", group_sizes=(1, 1, 1, 1), n_boxes=99)
