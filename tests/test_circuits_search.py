"""Staged path-patching search: each stage is the path_patch call it describes; selection rules; presets."""

import pytest
import torch

from interp.circuits import SearchConfig, Stage, ioi_stages, path_patch_search, prakash_stages
from interp.metrics import LogitDiff
from interp.patching import path_patch
from interp.sites import Site
from interp.tasks.promptset import PromptSet


@pytest.fixture(scope="module")
def ps():
    g = torch.Generator().manual_seed(9)
    B, T = 4, 9
    clean = torch.randint(4, 20, (B, T), generator=g)
    corrupt = clean.clone()
    corrupt[:, [2, 4, 6]] = torch.randint(4, 20, (B, 3), generator=g)
    end = torch.full((B,), T - 1)
    pos = {"IO": torch.full((B,), 2), "S1": torch.full((B,), 4), "S2": torch.full((B,), 6), "END": end}
    return PromptSet(
        name="toy",
        clean=clean,
        corrupt=corrupt,
        attention_mask=torch.ones_like(clean),
        answer_ids=clean[:, 2],
        wrong_ids=clean[:, 4],
        end=end,
        positions=pos,
        prompts=[""] * B,
        corrupt_prompts=[""] * B,
        metadata=[{} for _ in range(B)],
    )


def test_stages_are_path_patch_calls(tiny_models, ps):
    model = tiny_models("gpt2", "tl")
    stages = (
        Stage(name="mover", k=5, sign="abs"),
        Stage(
            name="inhibition",
            receivers="v",
            sender_pos="S1+1",
            receiver_pos="S1+1",
            k=1,
            sign="abs",
            exclude_chosen=False,
        ),
    )
    res = path_patch_search(model, prompts=ps, metric=LogitDiff, stages=stages)
    first = path_patch(model, clean=ps, metric=LogitDiff, sender_pos="END")
    assert torch.allclose(res["mover"].scores, first.scores, equal_nan=True)
    norm = first.scores / first.scores.nan_to_num().abs().max()
    assert (
        torch.allclose(res["mover"].normalised, norm, equal_nan=True)
        and res["mover"].normalised.abs().max() == 1
    )
    want = sorted(sorted(first.senders, key=lambda h: -abs(float(norm[h])))[:5])
    assert res["mover"].chosen == want
    movers = [h for h in want if h[0] == 1]
    assert movers  # 5 of 8 heads: at least one in layer 1
    second = res["inhibition"]
    ref = path_patch(
        model,
        clean=ps,
        metric=LogitDiff,
        senders=[(0, h) for h in range(4)],
        receivers=[Site("v", layer, head=h) for layer, h in movers],
        sender_pos=torch.full((4,), 5),
        receiver_pos=torch.full((4,), 5),
    )
    assert torch.allclose(second.scores, ref.scores, equal_nan=True)
    assert second.receivers == want and len(second.chosen) == 1
    assert second.chosen[0] == max(ref.senders, key=lambda h: abs(float(ref.scores[h])))
    # heads chosen before are skipped when exclude_chosen (the default)
    again = path_patch_search(
        model,
        prompts=ps,
        metric=LogitDiff,
        stages=(
            stages[0],
            Stage(name="inhibition", receivers="v", sender_pos="S1+1", receiver_pos="S1+1", k=8, sign="abs"),
        ),
    )
    assert not set(again["inhibition"].chosen) & set(want)
    circuit = res.circuit()
    assert set(circuit.heads) == set(want) | set(second.chosen)
    assert all(circuit.positions[f"a{h[0]}.{h[1]}"] == "END" for h in want)
    df = res.to_frame()
    assert set(df["stage"]) == {"mover", "inhibition"} and df["chosen"].sum() == 6
    assert res.figure().data


def test_threshold_and_sign(tiny_models, ps):
    model = tiny_models("gpt2", "tl")
    res = path_patch_search(
        model,
        prompts=ps,
        metric=LogitDiff,
        stages=(Stage(name="a", select="threshold", threshold=0.3, sign="abs"),),
    )
    n = res["a"].normalised
    assert res["a"].chosen == sorted(
        (layer, h) for layer in range(2) for h in range(4) if abs(float(n[layer, h])) >= 0.3
    )
    neg = path_patch_search(
        model, prompts=ps, metric=LogitDiff, stages=(Stage(name="a", k=3, sign="negative"),)
    )
    assert all(float(n[h]) < 0 for h in neg["a"].chosen)


def test_presets_and_errors(tiny_models, ps):
    assert [s.name for s in ioi_stages()] == [
        "mover",
        "s_inhibition",
        "induction_duplicate",
        "previous_token",
    ]
    assert ioi_stages()[3].sender_pos == "S1+1"
    assert [s.receivers for s in prakash_stages()] == ["logits", "q", "v", "v"]
    assert all(s.sign == "negative" for s in prakash_stages())
    model = tiny_models("gpt2", "tl")
    res = path_patch_search(model, prompts=ps, metric=LogitDiff, stages=ioi_stages(k_mover=2))
    assert [s.stage.name for s in res.stages] == [s.name for s in ioi_stages()]
    with pytest.raises(ValueError, match="query_label"):  # checked before any forward pass
        path_patch_search(model, prompts=ps, metric=LogitDiff, stages=prakash_stages())
    with pytest.raises(ValueError, match="first stage"):
        SearchConfig(stages=(Stage(name="x", receivers="q"),))
    with pytest.raises(ValueError, match="earlier stage"):
        SearchConfig(stages=(Stage(name="x"), Stage(name="y", receivers="q", of="z")))
    with pytest.raises(ValueError, match="receivers"):
        Stage(name="x", receivers="z")
