"""Metrics on hand-computed logits: values, float32, gather/from_gathered agreement, shape errors."""

from __future__ import annotations

import math

import pytest
import torch

from interp.metrics import (
    Accuracy,
    AnswerProb,
    FunctionMetric,
    LogitDiff,
    NormalisedRecovery,
    PairAccuracy,
    as_metric,
    group_pairs,
    pair_accuracy,
)
from interp.models.tokenizer import build_word_tokenizer
from interp.tasks import PromptSet, make, vocabulary

VOCAB = 6


def _prompts(answers, wrongs, ends, options=None, metadata=None) -> PromptSet:
    """A hand-made PromptSet: prompt i has ends[i] + 1 real tokens in a row of width 4."""
    b = len(answers)
    mask = torch.tensor([[1 if j <= e else 0 for j in range(4)] for e in ends])
    ids = torch.ones(b, 4, dtype=torch.long) * mask
    return PromptSet(
        name="hand",
        clean=ids,
        corrupt=ids.clone(),
        attention_mask=mask,
        answer_ids=torch.tensor(answers),
        wrong_ids=torch.tensor(wrongs),
        end=torch.tensor(ends),
        positions={"END": torch.tensor(ends)},
        prompts=["p"] * b,
        corrupt_prompts=["c"] * b,
        metadata=metadata or [{} for _ in range(b)],
        options=None if options is None else torch.tensor(options),
    )


@pytest.fixture
def ps() -> PromptSet:
    return _prompts(answers=[1, 4], wrongs=[2, 0], ends=[3, 1], options=[[1, 2, 3], [0, 4, 5]])


@pytest.fixture
def logits() -> torch.Tensor:
    x = torch.zeros(2, 4, VOCAB)
    x[0, 3] = torch.tensor([0.0, 2.0, 5.0, 1.0, 0.0, 0.0])  # prompt 0 read at pos 3: answer 1, wrong 2
    x[1, 1] = torch.tensor(
        [1.0, 0.0, 0.0, 9.0, math.log(3.0), 0.0]
    )  # prompt 1 read at pos 1: answer 4, wrong 0
    x[0, 0] = 100.0  # positions that must not be read
    x[1, 3, 4] = 100.0
    return x


def test_logit_diff(ps, logits):
    m = LogitDiff.from_prompts(ps)
    assert torch.equal(m.positions, ps.end) and m.token_ids.tolist() == [[1, 2], [4, 0]]
    torch.testing.assert_close(m(logits), torch.tensor([2.0 - 5.0, math.log(3.0) - 1.0]))


def test_answer_prob(ps, logits):
    m = AnswerProb.from_prompts(ps)
    assert m.token_ids is None
    z0 = math.exp(0) * 3 + math.exp(2) + math.exp(5) + math.exp(1)
    z1 = math.exp(1) + 3 + math.exp(9) + 3
    torch.testing.assert_close(m(logits), torch.tensor([math.exp(2) / z0, 3 / z1]))


def test_accuracy_over_vocab_and_options(ps, logits):
    assert Accuracy.from_prompts(ps)(logits).tolist() == [0.0, 0.0]  # argmax is 2 and 3
    over = Accuracy.from_prompts(ps, over="options")
    assert over.target.tolist() == [0, 1]
    # prompt 0: options (1, 2, 3) -> 2 wins (wrong); prompt 1: options (0, 4, 5) -> 4 (log 3 > 1.0) wins
    assert over(logits).tolist() == [0.0, 1.0]
    logits[0, 3, 1] = 6.0
    assert Accuracy.from_prompts(ps)(logits).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="no options"):
        Accuracy.from_prompts(_prompts([1], [2], [3]), over="options")


def test_float32_for_bf16_and_lead_dims(ps, logits):
    for m in (
        LogitDiff.from_prompts(ps),
        AnswerProb.from_prompts(ps),
        Accuracy.from_prompts(ps, over="options"),
    ):
        out = m(logits.bfloat16())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, m(logits.bfloat16().float()))
        stacked = torch.stack([logits, 2 * logits, -logits])  # (3, batch, pos, vocab)
        lead = m(stacked)
        assert lead.shape == (3, 2)
        for k in range(3):
            torch.testing.assert_close(lead[k], m(stacked[k]))


def test_from_gathered_agrees_with_call(ps, logits):
    noisy = logits + torch.randn_like(logits)
    for m in (
        LogitDiff.from_prompts(ps),
        AnswerProb.from_prompts(ps),
        Accuracy.from_prompts(ps),
        Accuracy.from_prompts(ps, over="options"),
    ):
        x = m.gather(noisy)
        k = VOCAB if m.token_ids is None else m.token_ids.shape[1]
        assert x.shape == (2, k)
        torch.testing.assert_close(m.from_gathered(x), m(noisy))
        # gathering by hand gives the same columns
        rows = noisy[torch.arange(2), ps.end]
        manual = rows if m.token_ids is None else rows.gather(1, m.token_ids)
        torch.testing.assert_close(x, manual)


def test_normalised_recovery(ps, logits):
    corrupt = logits.clone()
    corrupt[0, 3, 2], corrupt[1, 1, 0] = 2.0, math.log(3.0)  # logit diff 0 for both prompts
    m = NormalisedRecovery.from_prompts(ps, clean_logits=logits, corrupt_logits=corrupt)
    assert m(logits).tolist() == pytest.approx([-3.0 / m.clean_value, (math.log(3) - 1) / m.clean_value])
    assert m.corrupt_value == 0.0 and torch.allclose(m(corrupt), torch.zeros(2))
    per = NormalisedRecovery.from_prompts(ps, clean_logits=logits, corrupt_logits=corrupt, per_prompt=True)
    torch.testing.assert_close(per(logits), torch.ones(2))
    torch.testing.assert_close(per(corrupt), torch.zeros(2))
    half = (logits + corrupt) / 2
    torch.testing.assert_close(per(half), torch.full((2,), 0.5))
    torch.testing.assert_close(per.from_gathered(per.gather(half)), per(half))
    with pytest.raises(ValueError, match="undefined"):
        NormalisedRecovery(metric=LogitDiff.from_prompts(ps), clean_value=1.0, corrupt_value=1.0)


def test_pair_accuracy_always_context_model_scores_zero():
    tok = build_word_tokenizer(vocabulary())
    cp = make("context_prior", tok, n=8, seed=0)
    pairs = group_pairs(cp)
    assert pairs.shape == (4, 2)
    assert [cp.metadata[i]["intent"] for i in pairs[:, 0].tolist()] == ["context"] * 4
    ctx_answer = torch.tensor([tok.convert_tokens_to_ids(m["context"]) for m in cp.metadata])
    logits = torch.zeros(8, cp.clean.shape[1], len(tok))
    logits[torch.arange(8), cp.end, ctx_answer] = 1.0  # always answers from the context
    acc, pair = Accuracy.from_prompts(cp)(logits), PairAccuracy.from_prompts(cp)(logits)
    assert acc.mean().item() == 0.5 and pair.tolist() == [0.0] * 8
    logits[torch.arange(8), cp.end, cp.answer_ids] = 2.0  # now always right
    assert PairAccuracy.from_prompts(cp)(logits).tolist() == [1.0] * 8
    assert pair_accuracy(torch.tensor([1, 1, 0]), torch.tensor([1.0, 0.0, 0.0])).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="exactly two"):
        group_pairs(cp.subset([0, 1, 2]))


def test_as_metric_wraps_callables_and_classes(ps, logits):
    m = as_metric(lambda x: x[:, 0, 0], ps)
    assert isinstance(m, FunctionMetric) and m.positions is None and m.token_ids is None
    out = m(logits.bfloat16())
    assert out.dtype == torch.float32 and out.tolist() == [100.0, 0.0]
    assert m(torch.stack([logits, logits])).shape == (2, 2)
    assert isinstance(as_metric(LogitDiff, ps), LogitDiff)
    bound = LogitDiff.from_prompts(ps)
    assert as_metric(bound, ps) is bound
    with pytest.raises(ValueError, match="bound to 2 prompts"):
        as_metric(bound, _prompts([1], [2], [3]))
    with pytest.raises(ValueError, match="returned shape"):
        as_metric(lambda x: x[:, 0], ps)(logits)
    with pytest.raises(TypeError):
        as_metric(3, ps)


def test_shape_errors(ps, logits):
    m = LogitDiff.from_prompts(ps)
    with pytest.raises(ValueError, match="bound to 2 prompts"):
        m(logits[:1])
    with pytest.raises(ValueError, match="position 3"):
        m(logits[:, :2])
    with pytest.raises(ValueError, match="expects gathered values"):
        m.from_gathered(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="expects gathered values"):
        AnswerProb.from_prompts(ps).from_gathered(torch.zeros(3, VOCAB))
    with pytest.raises(ValueError, match="equal shapes"):
        pair_accuracy(torch.ones(2), torch.ones(3))


def test_rank_correlation_is_spearman():
    from scipy.stats import spearmanr

    from interp.metrics import rank_correlation

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, generator=g), torch.randn(24, generator=g)
    assert abs(rank_correlation(a, b) - spearmanr(a.flatten(), b).statistic) < 1e-6
    assert rank_correlation(a, a.flatten() * 3 + 1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal sizes"):
        rank_correlation(a, b[:5])
