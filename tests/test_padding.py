"""Prompts of different lengths: handled by role (named positions per prompt, the mask on every forward) or
refused before compute; left and right padding give the same scores where both are supported."""

import pytest
import torch

from interp.finetuning.tuco import tuco
from interp.metrics import LogitDiff
from interp.patching import patch_sweep, path_patch
from interp.patching.inputs import InputError
from interp.tasks.promptset import PromptSet

LENGTHS = [8, 6, 8, 7]  # rows 1 and 3 are shorter
T = max(LENGTHS)
PAD = 2


def variable_prompts(seed: int = 0) -> PromptSet:
    """Right-padded prompts of LENGTHS tokens: BOS, random words, a corrupted word at position 2; S2 = 3."""
    g = torch.Generator().manual_seed(seed)
    B = len(LENGTHS)
    ids = torch.randint(4, 20, (B, T), generator=g)
    ids[:, 0] = 0
    corrupt = ids.clone()
    corrupt[:, 2] = torch.randint(4, 20, (B,), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    ids[mask == 0] = PAD
    corrupt[mask == 0] = PAD
    return PromptSet(
        name="variable",
        clean=ids,
        corrupt=corrupt,
        attention_mask=mask,
        answer_ids=torch.randint(4, 20, (B,), generator=g),
        wrong_ids=torch.randint(4, 20, (B,), generator=g),
        end=mask.sum(1) - 1,
        positions={"S2": torch.full((B,), 3)},
        prompts=[""] * B,
        corrupt_prompts=[""] * B,
        metadata=[{}] * B,
    )


def left_padded(ps: PromptSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean, corrupt, mask) with every row's real tokens moved to the end."""
    shift = T - ps.lengths
    idx = (torch.arange(T)[None] - shift[:, None]) % T  # row b, new position t holds old position t - shift_b
    take = lambda x: torch.gather(x, 1, idx)  # noqa: E731
    mask = take(ps.attention_mask)
    clean, corrupt = take(ps.clean), take(ps.corrupt)
    clean[mask == 0] = PAD
    corrupt[mask == 0] = PAD
    return clean, corrupt, mask


@pytest.fixture(scope="module")
def ps():
    return variable_prompts()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_left_and_right_padding_give_the_same_sweep(tiny_models, ps, arch, backend):
    model = tiny_models(arch, backend)
    b = torch.arange(len(ps))
    ans, wrong = ps.answer_ids, ps.wrong_ids
    kw = dict(component="z", per_head=True, positions="all")
    right = patch_sweep(model, clean=ps, metric=LogitDiff.from_prompts(ps), **kw)
    clean, corrupt, mask = left_padded(ps)
    left = patch_sweep(
        model,
        clean=clean,
        corrupt=corrupt,
        attention_mask=mask,
        metric=lambda lg: lg[b, -1, ans] - lg[b, -1, wrong],  # the last real token of every left-padded row
        **kw,
    )
    assert right.scores.abs().max() > 0
    assert (left.scores - right.scores).abs().max().item() <= 1e-5
    assert left.baseline == pytest.approx(right.baseline, abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_and_right_padding_give_the_same_path_patching(tiny_models, ps, arch):
    model = tiny_models(arch, "tl")
    b = torch.arange(len(ps))
    right = path_patch(model, clean=ps, metric=LogitDiff.from_prompts(ps), convention="raw")
    clean, corrupt, mask = left_padded(ps)
    left = path_patch(
        model,
        clean=clean,
        corrupt=corrupt,
        attention_mask=mask,
        metric=lambda lg: lg[b, -1, ps.answer_ids] - lg[b, -1, ps.wrong_ids],
        convention="raw",
    )
    assert right.scores.abs().max() > 0
    assert (left.scores - right.scores).abs().max().item() <= 1e-5


@pytest.mark.parametrize("engine", ["tl", "generic"])
@pytest.mark.parametrize(("component", "per_head"), [("resid_pre", False), ("z", True)])
def test_named_positions_line_up_prompts_of_different_lengths(tiny_models, ps, engine, component, per_head):
    """Oracle: each group of one length, unpadded, swept on its own; the padded sweep is their weighted mean."""
    model = tiny_models("gpt2", "tl")
    kw = dict(component=component, per_head=per_head, positions=["S2", "END"], engine=engine)
    got = patch_sweep(model, clean=ps, metric=LogitDiff, **kw)
    assert got.labels["pos"] == ["S2", "END"] and got.config.positions == ("S2", "END")
    parts, weights = [], []
    for group in ps.group_by_length().values():
        parts.append(patch_sweep(model, clean=group, metric=LogitDiff, **kw).scores)
        weights.append(len(group))
    oracle = sum(w * s for w, s in zip(weights, parts, strict=True)) / sum(weights)
    assert got.scores.abs().max() > 0
    assert (got.scores - oracle).abs().max().item() <= 1e-5


def test_absolute_positions_on_prompts_of_different_lengths_are_refused(tiny_models, ps):
    model = tiny_models("gpt2", "tl")
    for positions in ("each", 3, [1, 2]):
        with pytest.raises(
            InputError, match=r"rows 1, 3 are|row 1 is 6 tokens; row 3 is 7 tokens, the rest 8"
        ):
            patch_sweep(model, clean=ps, metric=LogitDiff, positions=positions)
    with pytest.raises(InputError, match="same_length=True"):
        path_patch(model, clean=ps, metric=LogitDiff, sender_pos=3)


def test_a_metric_reading_padding_is_refused(tiny_models, ps):
    model = tiny_models("gpt2", "tl")
    b = torch.arange(len(ps))
    last = lambda lg: lg[b, -1, ps.answer_ids] - lg[b, -1, ps.wrong_ids]  # noqa: E731  (padding in rows 1, 3)
    argmax = lambda lg: (lg[:, -1].argmax(-1) == ps.answer_ids).float()  # noqa: E731  (no gradient)
    with pytest.raises(InputError, match=r"reads padding in rows 1, 3"):
        patch_sweep(model, clean=ps, metric=last, positions="END")
    with pytest.raises(InputError, match=r"cannot be told \(its value has no gradient"):
        patch_sweep(model, clean=ps, metric=argmax, positions="END")
    ok = patch_sweep(model, clean=ps, metric=lambda lg: lg[b, ps.end, ps.answer_ids], positions="END")
    assert ok.scores.shape == (model.cfg.n_layers, 1)


def test_tuco_left_and_right_padding_agree(organism_like, ps):
    from interp import load_model

    base = load_model(organism_like["base"], backend="tl", device="cpu")
    ft = load_model(organism_like["ft"], backend="tl", device="cpu")
    clean, _, mask = left_padded(ps)
    right = tuco(ft, base, ps.clean, attention_mask=ps.attention_mask)
    left = tuco(ft, base, clean, attention_mask=mask)
    assert right.score.abs().min() > 0
    assert torch.allclose(left.score, right.score, atol=1e-5)
