"""Overlap of circuits (Merullo et al. 2024) and head interventions (attention pattern / output rules)."""

import pytest
import torch

from interp.circuits import Circuit
from interp.circuits.compare import overlap, stage_sets, top_fraction
from interp.circuits.intervene import Intervention, accuracy_with, intervention_hooks
from interp.sites import Site
from interp.tasks.promptset import PromptSet


def test_top_fraction_and_overlap():
    s = torch.arange(24 * 16, dtype=torch.float).view(24, 16)  # GPT2-Medium's 384 heads
    top = top_fraction(s, 0.02)
    assert len(top) == 8 and top == {(23, h) for h in range(8, 16)}
    assert top_fraction(-s, 0.02, sign="negative") == top and top_fraction(-s, 0.02, sign="abs") == top
    tiny = torch.tensor([[0.1, -0.9], [float("nan"), 0.5]])
    assert top_fraction(tiny, 0.02) == {(0, 1)} and top_fraction(tiny, 0.02, sign="positive") == {(1, 1)}
    assert top_fraction(tiny, 0.02, min_count=2) == {(0, 1), (1, 1)}
    # the paper's 25 of 32 shared heads
    a = {f"a{i // 16}.{i % 16}" for i in range(32)}
    b = {f"a{i // 16}.{i % 16}" for i in range(7, 39)}
    o = overlap(a, b)
    assert o.overlap == 25 / 32 and o.jaccard == 25 / 39 and o.to_dict()["n_shared"] == 25
    # staged circuits: normalised per stage, compared stage by stage and as unions
    sa = stage_sets({"mover": s, "inhibition": -s}, 0.02)
    sb = stage_sets({"mover": s * 100, "inhibition": s}, 0.02, sign="positive")
    staged = overlap(sa, sb)
    assert staged.per_stage["mover"]["overlap"] == 1.0 and staged.overlap == 1.0
    assert overlap(Circuit(nodes=("a0.1", "a1.0")), [(1, 0)]).overlap == 0.5
    with pytest.raises(ValueError, match="fraction"):
        top_fraction(s, 0.0)


@pytest.fixture(scope="module")
def ps():
    g = torch.Generator().manual_seed(4)
    B, T = 3, 7
    clean = torch.randint(4, 20, (B, T), generator=g)
    end = torch.full((B,), T - 1)
    return PromptSet(
        name="x",
        clean=clean,
        corrupt=torch.randint(4, 20, (B, T), generator=g),
        attention_mask=torch.ones_like(clean),
        answer_ids=clean[:, 2],
        wrong_ids=clean[:, 3],
        end=end,
        positions={"END": end, "X": torch.tensor([1, 2, 3]), "Y": torch.full((B,), 4)},
        prompts=[""] * B,
        corrupt_prompts=[""] * B,
        metadata=[{} for _ in range(B)],
        options=torch.stack([clean[:, 2], clean[:, 3]], 1),
    )


def test_pattern_and_output_interventions(tiny_models, ps):
    model = tiny_models("gpt2", "tl")
    iv = Intervention(layer=1, head=2, kind="pattern", at="END", attend_to=("X", "Y"))
    _, cache = model.run_with_cache(
        ps.clean, [Site("z", 1), Site("v", 1)], hooks=intervention_hooks(model, ps, [iv])
    )
    b = torch.arange(3)
    v = cache["blocks.1.attn.hook_v"][:, :, 2]
    want = (v[b, ps.positions["X"]] + v[b, ps.positions["Y"]]) / 2  # attention split evenly over X and Y
    assert torch.allclose(cache["blocks.1.attn.hook_z"][:, -1, 2], want, atol=1e-6)
    kill = Intervention(layer=0, head=1, kind="output", at="END", scale=0.0)
    swap = Intervention(layer=1, head=0, kind="output", at=None, source="corrupt")
    _, cache = model.run_with_cache(
        ps.clean, [Site("z", 0), Site("z", 1)], hooks=intervention_hooks(model, ps, [kill, swap])
    )
    _, corrupt = model.run_with_cache(ps.corrupt, [Site("z", 1)])
    assert cache["blocks.0.attn.hook_z"][:, -1, 1].abs().max() == 0
    assert cache["blocks.0.attn.hook_z"][:, -2, 1].abs().max() > 0
    assert torch.allclose(cache["blocks.1.attn.hook_z"][:, :, 0], corrupt["blocks.1.attn.hook_z"][:, :, 0])
    acc = accuracy_with(model, ps, [], over="options")
    assert 0 <= acc <= 1
    with pytest.raises(ValueError, match="attend_to"):
        Intervention(layer=0, head=0, kind="pattern")
    with pytest.raises(ValueError, match="does not exist"):
        intervention_hooks(model, ps, [Intervention(layer=9, head=0, kind="output")])
