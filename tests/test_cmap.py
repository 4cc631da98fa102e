"""CMAP (Prakash et al. 2024): self-patching is a no-op; patching everything that differs reproduces the sender."""

import pytest
import torch

from interp import load_model
from interp.finetuning import (
    HeadGroup,
    PairMismatchError,
    cmap_input,
    cmap_output,
    cmap_sweep,
    evaluate_circuit,
    random_circuit,
)
from interp.finetuning.pair import perturbed_twin
from interp.metrics import LogitDiff
from interp.sites import SiteError
from interp.tasks.promptset import PromptSet

ARCHS = ["gpt2", "llama"]
QKV = {"gpt2": ("attn.c_attn",), "llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
BLOCKS = {"gpt2": "transformer.h.", "llama": "model.layers."}
B, T = 3, 7


@pytest.fixture(scope="module")
def models(tiny_dirs, tmp_path_factory):
    """Base model plus two twins per arch: 'qkv' (only W_Q/W_K/W_V differ) and 'blocks' (every block differs)."""
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
            tiny_dirs[a], root / f"blocks-{a}", scale=0.05, select=lambda n, a=a: n.startswith(BLOCKS[a])
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
    return tuple((layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads))


GROUPS = [
    HeadGroup(name="movers", heads=((1, 0), (1, 2)), position="END"),
    HeadGroup(name="s2", heads=((0, 1),), position="S2"),
    HeadGroup(name="mlp", components=(("mlp_out", 0),), heads=((0, 3),), position="all"),
]


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_self_patching_is_a_noop(models, prompts, arch, backend):
    m = models("base", arch, backend)
    out = cmap_output(m, m, prompts, GROUPS, metric=LogitDiff)
    assert out.groups == ("movers", "s2", "mlp", "all groups")
    assert torch.allclose(out.values, out.receiver.expand_as(out.values), atol=1e-5)
    inp = cmap_input(m, m, prompts, GROUPS[:2], metric=LogitDiff)
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
    group = HeadGroup(name="all heads", heads=all_heads(base), position="all")
    one = HeadGroup(name="one head", heads=((0, 0),), position="END")
    res = cmap_output(base, ft, prompts, [group, one], metric=LogitDiff)
    assert (res.sender - res.receiver).abs().min() > 1e-3  # the twins really differ
    assert torch.allclose(res.values[0], res.sender, atol=1e-4)
    assert not torch.allclose(res.values[1], res.sender, atol=1e-4)
    frame = res.to_frame()
    assert frame.loc[0, "gap_closed"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_cmap_of_all_components_reproduces_sender(models, prompts, arch):
    """Twins whose blocks differ (embeddings and unembedding shared): attn_out + mlp_out everywhere = the sender."""
    base, ft = models("base", arch), models("blocks", arch)
    L = base.cfg.n_layers
    comps = tuple((c, layer) for layer in range(L) for c in ("attn_out", "mlp_out"))
    res = cmap_output(
        base, ft, prompts, [HeadGroup(name="everything", components=comps, position="all")], metric=LogitDiff
    )
    assert (res.sender - res.receiver).abs().min() > 1e-3
    assert torch.allclose(res.values[0], res.sender, atol=1e-4)


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_input_cmap_of_every_head_at_end_reproduces_sender(models, prompts, arch, backend):
    """q at END and k/v at 0..END of every head from a q/k/v-only twin: the END prediction is the sender's."""
    base, ft = models("base", arch, backend), models("qkv", arch, backend)
    group = HeadGroup(name="all heads", heads=all_heads(base), position="END")
    res = cmap_input(base, ft, prompts, [group], metric=LogitDiff, kv_through_position=True)
    assert torch.allclose(res.values[0], res.sender, atol=1e-4)
    before = cmap_input(base, ft, prompts, [group], metric=LogitDiff)  # the paper's k/v: strictly before END
    res_q = cmap_input(base, ft, prompts, [group], metric=LogitDiff, patch=("q",), kv_through_position=True)
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


def test_circuit_evaluation(models, prompts):
    base, ft = models("base", "gpt2"), models("qkv", "gpt2")
    everything = [HeadGroup(name="all", heads=all_heads(base), position="all")]
    small = [
        HeadGroup(name="A", heads=((1, 0),), position="END"),
        HeadGroup(name="B", heads=((0, 1),), position="S2"),
    ]
    ev = evaluate_circuit(
        base, prompts, {"full": everything, "small": small}, metric=LogitDiff, reference=prompts
    )
    assert ev.faithfulness()["full"] == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(ev.values[1], ev.model_value, atol=1e-3)
    # one reference prompt: its own mean is itself, so ablating with it changes nothing
    one = prompts.subset([0])
    ev1 = evaluate_circuit(base, one, small, metric=LogitDiff, reference=one)
    assert torch.allclose(ev1.values[0], ev1.model_value, atol=1e-5)
    # the base model's circuit evaluated inside the fine-tune
    in_ft = evaluate_circuit(ft, prompts, {"base circuit": everything}, metric=LogitDiff, reference=prompts)
    assert in_ft.model == ft.name and in_ft.faithfulness()["base circuit"] == pytest.approx(1.0, abs=1e-5)
    rand = random_circuit(small, n_layers=2, n_heads=4, seed=0)
    assert [g.size for g in rand] == [1, 1] and [g.position for g in rand] == ["END", "S2"]


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
        cmap_output(base, base, prompts, [HeadGroup(name="x", heads=((0, 9),))], metric=LogitDiff)
    with pytest.raises(ValueError, match="IO"):
        cmap_output(
            base, base, prompts, [HeadGroup(name="x", heads=((0, 1),), position="IO")], metric=LogitDiff
        )
    with pytest.raises(ValueError, match="empty"):
        HeadGroup(name="x")
    with pytest.raises(ValueError, match="components"):
        cmap_input(base, base, prompts, [GROUPS[2]], metric=LogitDiff)


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
