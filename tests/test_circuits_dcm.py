"""DCM: m ≡ 1 is the clean run, m ≡ 0 full group patching; the loss; masks stay in [0, 1]; IOI desiderata."""

import pytest
import torch

from interp.circuits.dcm import DCMConfig, dcm, dcm_loss, ioi_desiderata, masked_logits
from interp.sites import Site

HEADS = [(0, 1), (1, 0), (1, 3)]


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(7)
    base = torch.randint(4, 20, (6, 7), generator=g)
    source = torch.randint(4, 20, (6, 7), generator=g)
    return base, source, torch.full((6,), 6), torch.full((6,), 5)


def test_mask_one_is_clean_and_zero_is_group_patching(tiny_models, pair):
    model = tiny_models("gpt2", "tl")
    base, source, bpos, spos = pair
    with torch.no_grad():
        clean = model(base)
        ones = masked_logits(
            model, base=base, source=source, heads=HEADS, mask=torch.ones(3), base_pos=bpos, source_pos=spos
        )
        zeros = masked_logits(
            model, base=base, source=source, heads=HEADS, mask=torch.zeros(3), base_pos=bpos, source_pos=spos
        )
        _, cache = model.run_with_cache(source, [Site("z", 0), Site("z", 1)])

        def patch(z, site):  # full group patching, written independently
            z = z.clone()
            for layer, h in HEADS:
                if layer == site.layer:
                    z[:, 6, h] = cache[site.hook_name][:, 5, h]
            return z

        want = model.run_with_hooks(base, [(Site("z", 0), patch), (Site("z", 1), patch)])
        all_pos = masked_logits(model, base=base, source=source, heads=HEADS, mask=torch.zeros(3))
    assert torch.equal(ones, clean)
    assert torch.allclose(zeros, want, atol=1e-6) and not torch.allclose(zeros, clean, atol=1e-3)
    assert not torch.allclose(all_pos, zeros, atol=1e-4)  # every position vs one position differ
    # half-way masks interpolate the head outputs, so the loss is differentiable in m
    m = torch.full((3,), 0.5, requires_grad=True)
    lg = masked_logits(model, base=base, source=source, heads=HEADS, mask=m, base_pos=bpos, source_pos=spos)
    targets = torch.arange(6) + 4
    loss = dcm_loss(lg[:, -1], targets, m, lam=0.1)
    want_loss = -lg[torch.arange(6), -1, targets].mean() + 0.1 * 1.5
    assert torch.allclose(loss, want_loss)
    (g,) = torch.autograd.grad(loss, [m])
    assert g.abs().sum() > 0


def test_dcm_training_keeps_mask_in_range_and_checks_inputs(tiny_models, word_tokenizer):
    from interp.tasks.promptset import PromptSet

    model = tiny_models("gpt2", "tl")
    g = torch.Generator().manual_seed(8)
    n, T = 12, 6

    def ps(seed):
        clean = torch.randint(4, 20, (n, T), generator=torch.Generator().manual_seed(seed))
        end = torch.full((n,), T - 1)
        return PromptSet(
            name="x",
            clean=clean,
            corrupt=clean,
            attention_mask=torch.ones_like(clean),
            answer_ids=torch.randint(4, 20, (n,), generator=g),
            wrong_ids=torch.randint(4, 20, (n,), generator=g),
            end=end,
            positions={"END": end},
            prompts=[""] * n,
            corrupt_prompts=[""] * n,
            metadata=[{} for _ in range(n)],
        )

    base, source = ps(1), ps(2)
    res = dcm(
        model,
        base=base,
        source=source,
        targets=source.answer_ids,
        heads=HEADS,
        config=DCMConfig(epochs=2, batch_size=3, eval_every=1, lr=0.5),
    )
    assert bool(((res.raw_mask >= 0) & (res.raw_mask <= 1)).all()) and len(res.history) == 4
    assert set(res.mask.tolist()) <= {0.0, 1.0} and len(res.to_frame()) == 3
    with pytest.raises(ValueError, match="do not exist"):
        dcm(model, base=base, source=source, targets=source.answer_ids, heads=[(5, 0)])
    with pytest.raises(ValueError, match="align"):
        dcm(model, base=base, source=source.subset(range(5)), targets=source.answer_ids, heads=HEADS)


def test_ioi_desiderata():
    from interp.models.tokenizer import build_word_tokenizer
    from interp.tasks import vocabulary

    tok = build_word_tokenizer(vocabulary())
    for kind in ("io_name", "io_position"):
        base, source, target = ioi_desiderata(tok, kind, 8, seed=0)
        assert base.clean.shape == source.clean.shape
        for i in range(8):
            b, s = base.metadata[i], source.metadata[i]
            assert not {b["IO"], b["S"]} & {s["IO"], s["S"]}  # the source names other people
            want = s["IO"] if kind == "io_name" else b["S"]
            assert target[i] == tok(" " + want, add_special_tokens=False)["input_ids"][0]
            assert (b["order"] == s["order"]) == (kind == "io_name")
    with pytest.raises(ValueError, match="desideratum"):
        ioi_desiderata(tok, "s_name", 4, seed=0)
