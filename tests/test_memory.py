"""Memory stays within `memory_budget` at a large vocabulary: no [batch, pos, vocab] tensor unless the metric
needs one; baselines, sources and cells are chunked; the scores are those of an unconstrained sweep.

Peak memory is measured by `LiveBytes` (benchmarks/_common.py, shared with the benchmark's memory row): a
dispatch mode that tracks every tensor storage allocated inside it until the storage is freed (views and in-place
results of existing tensors are not new memory)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _common import LiveBytes  # noqa: E402

from interp.metrics import AnswerProb, LogitDiff  # noqa: E402
from interp.models.base import ModelConfig  # noqa: E402
from interp.models.tl import TLModel  # noqa: E402
from interp.patching import patch_sweep  # noqa: E402
from interp.tasks.promptset import PromptSet  # noqa: E402

V, B, T = 100_000, 4, 24
FULL_LOGITS = B * T * V * 4  # bytes of one [batch, pos, vocab] float32 tensor (38 MB)


@pytest.fixture(scope="module")
def wide(word_tokenizer):
    """A 2-layer, 16-wide GPT-2-style TransformerLens model with a 100,000-token vocabulary (random init)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=64, n_ctx=32, d_vocab=V, act_fn="gelu",
        normalization_type="LN", device="cpu",
    )  # fmt: skip
    tl = HookedTransformer(cfg).eval()
    mc = ModelConfig(
        architecture="GPT2LMHeadModel", n_layers=2, n_heads=2, n_kv_heads=2, d_model=16, d_head=8, d_mlp=64,
        d_vocab=V, n_ctx=32,
    )  # fmt: skip
    return TLModel(tl, word_tokenizer, mc, name="wide-vocab")


@pytest.fixture(scope="module")
def ps():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 20, (B, T), generator=g)
    corrupt = ids.clone()
    corrupt[:, 7] = torch.randint(4, 20, (B,), generator=g)
    return PromptSet(
        name="wide",
        clean=ids,
        corrupt=corrupt,
        attention_mask=torch.ones_like(ids),
        answer_ids=torch.randint(V - 1000, V, (B,), generator=g),  # ids far up the vocabulary
        wrong_ids=torch.randint(V - 1000, V, (B,), generator=g),
        end=torch.full((B,), T - 1),
        positions={},
        prompts=[""] * B,
        corrupt_prompts=[""] * B,
        metadata=[{}] * B,
    )


@pytest.mark.parametrize(
    ("metric", "budget"),
    [(LogitDiff, 1 << 20), (AnswerProb, 12 << 20)],  # AnswerProb reads the whole vocabulary at the end
)
@pytest.mark.parametrize(("component", "per_head"), [("resid_pre", False), ("z", True)])
def test_peak_memory_stays_within_the_budget(wide, ps, metric, budget, component, per_head):
    kw = dict(clean=ps, metric=metric, component=component, per_head=per_head)
    ref = patch_sweep(wide, **kw)  # default budget: one chunk, full-logit baselines
    with torch.no_grad(), LiveBytes() as mem:
        got = patch_sweep(wide, memory_budget=budget, **kw)
    assert mem.peak <= budget, (mem.peak, budget)
    assert mem.largest < FULL_LOGITS / 2
    assert ref.scores.abs().max() > 0
    assert (got.scores - ref.scores).abs().max().item() <= 1e-5
    assert got.baseline == pytest.approx(ref.baseline, abs=1e-5)


def test_a_plain_callable_costs_one_full_logits_tensor_at_most_a_few_times(wide, ps):
    """A callable takes [batch, pos, vocab] logits by contract: probing it needs a few such tensors once (the
    probe, its gradient and autograd's per-index buffers: ~4x for a two-term logit difference), calling it one,
    but no cell chunk builds full logits (without the read-set inference every chunk would)."""
    b = torch.arange(B)
    fn = lambda lg: lg[b, -1, ps.answer_ids] - lg[b, -1, ps.wrong_ids]  # noqa: E731
    ref = patch_sweep(wide, clean=ps, metric=LogitDiff)
    with torch.no_grad(), LiveBytes() as mem:
        got = patch_sweep(wide, clean=ps, metric=fn, memory_budget=1 << 20)
    assert mem.peak <= (1 << 20) + 5 * FULL_LOGITS, mem.peak
    assert (got.scores - ref.scores).abs().max().item() <= 1e-5
