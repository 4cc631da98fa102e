"""The bad-input table: one parametrised test per public entry point, each bad input with the error type and a
fragment of its message, raised before any forward pass (counted on the model's own forward)."""

from types import SimpleNamespace

import pytest
import torch
from helpers import swap_batch

from interp.circuits import eap
from interp.circuits.evaluate import evaluate_circuit
from interp.circuits.graph import Circuit
from interp.finetuning.cmap import cmap_input, cmap_output, cmap_sweep
from interp.finetuning.tuco import scaled_logits, tuco
from interp.metrics import LogitDiff
from interp.patching import attribution_patch, patch_sweep, path_patch
from interp.patching.inputs import InputError, NonFiniteError
from interp.subspace.ccs import check_ccs
from interp.tasks.promptset import PromptSet

B, T = 3, 8


def _prompts(lengths=None, seed=0) -> PromptSet:
    lengths = lengths or [T] * B
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 20, (B, T), generator=g)
    ids[:, 0] = 0
    corrupt = ids.clone()
    corrupt[:, 2] = torch.randint(4, 20, (B,), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids[mask == 0], corrupt[mask == 0] = 2, 2
    return PromptSet(
        name="toy",
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


@pytest.fixture(scope="module")
def data():
    clean, corrupt, ans, wrong = swap_batch(B, T, seed=3, swap_at=(2, 5))
    b = torch.arange(B)
    return SimpleNamespace(
        clean=clean,
        corrupt=corrupt,
        metric=lambda lg: lg[b, -1, ans] - lg[b, -1, wrong],
        ps=_prompts(),
        ps_var=_prompts([T, T - 2, T]),
        b=b,
        ans=ans,
    )


@pytest.fixture
def model(tiny_models, monkeypatch):
    """The tiny GPT-2 with its forward counted: every test asserts no forward pass ran."""
    m = tiny_models("gpt2", "tl")
    calls = {"n": 0}
    real = m.tl.forward

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(m.tl, "forward", counted)
    m.forwards = calls
    yield m
    del m.forwards


def _raises(model, fn, exc, fragment):
    with pytest.raises(exc, match=fragment):
        fn()
    assert model.forwards["n"] == 0, "a forward pass ran before the error"


def _nan(lg):
    return lg[:, -1, 0] * float("nan")


# (case, overrides of the call's keyword arguments as functions of `data`, error type, message fragment)
TOKENS = [
    ("empty batch", dict(clean=lambda d: d.clean[:0], corrupt=lambda d: d.corrupt[:0]), InputError, "is empty"),
    ("float tokens", dict(clean=lambda d: d.clean.float()), TypeError, "dtype torch.float32"),
    ("bool tokens", dict(clean=lambda d: d.clean > 5), TypeError, "must be integers"),
    ("ids out of the vocabulary", dict(clean=lambda d: d.clean + 1000), InputError, "vocabulary of"),
    ("negative ids", dict(corrupt=lambda d: d.corrupt - 100), InputError, "holds token id -"),
    ("1-D tokens", dict(clean=lambda d: d.clean[0], corrupt=lambda d: d.corrupt[0]), InputError, "batch axis"),
    ("shapes differ", dict(corrupt=lambda d: d.corrupt[:, :-1]), InputError, "same shape"),
    ("a list, not a tensor", dict(clean=lambda d: d.clean.tolist()), TypeError, "LongTensor"),
    ("corrupt missing", dict(corrupt=lambda d: None), TypeError, "give corrupt tokens"),
    ("PromptSet plus corrupt", dict(clean=lambda d: d.ps), TypeError, "corrupt=None"),
    ("metric not callable", dict(metric=lambda d: 3), TypeError, "metric must be"),
    ("metric of wrong shape", dict(metric=lambda d: lambda lg: lg[:, -1]), ValueError, "one value per prompt"),
    ("metric class on tensors", dict(metric=lambda d: LogitDiff), TypeError, "bound to prompts"),
    ("metric bound to other prompts", dict(metric=lambda d: LogitDiff.from_prompts(d.ps.subset([0, 1]))), ValueError,
     "bound to 2 prompts"),
]  # fmt: skip
POSITIONS = [
    ("positions='12'", dict(positions=lambda d: "12"), InputError, "is a string"),
    ("positions='END' on tensors", dict(positions=lambda d: "END"), InputError, "need a PromptSet"),
    ("positions=[1.7]", dict(positions=lambda d: [1.7]), TypeError, r"positions\[0\] = 1.7 is not a token index"),
    ("positions=[]", dict(positions=lambda d: []), InputError, "is empty"),
    ("positions out of range", dict(positions=lambda d: [0, 99]), InputError, "outside"),
    ("positions repeated", dict(positions=lambda d: [2, 2]), InputError, "repeat"),
    ("positions=True", dict(positions=lambda d: True), TypeError, "valid"),
    ("positions a set", dict(positions=lambda d: {1, 2}), TypeError, "valid"),
    ("unknown name", dict(clean=lambda d: d.ps, corrupt=lambda d: None, positions=lambda d: "S9"), InputError,
     "has positions"),
    ("name off the prompts", dict(clean=lambda d: d.ps, corrupt=lambda d: None, positions=lambda d: "END+1"),
     InputError, "falls outside"),
    ("'each' on prompts of different lengths", dict(clean=lambda d: d.ps_var, corrupt=lambda d: None,
     metric=lambda d: LogitDiff), InputError, "row 1 is 6 tokens, the rest 8"),
    ("an int on prompts of different lengths", dict(clean=lambda d: d.ps_var, corrupt=lambda d: None,
     metric=lambda d: LogitDiff, positions=lambda d: 3), InputError, "same_length=True"),
    ("metric reads padding", dict(clean=lambda d: d.ps_var, corrupt=lambda d: None, positions=lambda d: "END"),
     InputError, "reads padding in row 1"),
]  # fmt: skip
BUDGETS = [
    ("memory_budget=0", dict(memory_budget=lambda d: 0), InputError, "positive, finite"),
    ("memory_budget<0", dict(memory_budget=lambda d: -5), InputError, "positive, finite"),
    ("memory_budget=nan", dict(memory_budget=lambda d: float("nan")), InputError, "positive, finite"),
    ("memory_budget='1GB'", dict(memory_budget=lambda d: "1GB"), TypeError, "number of bytes"),
]
OPTIONS = [
    ("direction", dict(direction=lambda d: "sideways"), InputError, "direction must be one of"),
    ("nonfinite", dict(nonfinite=lambda d: "ignore"), InputError, "nonfinite must be one of"),
]


def _call(fn, base: dict, overrides: dict, d):
    kw = {**base, **{k: v(d) for k, v in overrides.items()}}
    return lambda: fn(**{k: v for k, v in kw.items()})


def _tensors(model, d):
    return dict(model=model, clean=d.clean, corrupt=d.corrupt, metric=d.metric)


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), TOKENS + POSITIONS + BUDGETS + OPTIONS + [
    ("prefix_groups=0", dict(prefix_groups=lambda d: 0), InputError, "prefix_groups must be >= 1"),
    ("seed=-1", dict(seed=lambda d: -1), InputError, "seed must be >= 0"),
    ("engine", dict(engine=lambda d: "jax"), InputError, "engine must be one of"),
    ("'all' without heads", dict(positions=lambda d: "all"), InputError, "needs per_head=True"),
    ("attention mask with a PromptSet", dict(clean=lambda d: d.ps, corrupt=lambda d: None,
     attention_mask=lambda d: d.ps.attention_mask), TypeError, "carries its own"),
    ("attention mask row of zeros", dict(attention_mask=lambda d: torch.ones(B, T).index_fill_(0, torch.tensor([1]), 0)),
     InputError, "row 1 of the attention mask is all zeros"),
    ("attention mask with holes", dict(attention_mask=lambda d: torch.ones(B, T).index_fill_(1, torch.tensor([3]), 0)),
     InputError, "holes"),
])  # fmt: skip
def test_patch_sweep(model, data, case, over, exc, fragment):
    _raises(model, _call(patch_sweep, _tensors(model, data), over, data), exc, fragment)


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), TOKENS + OPTIONS[1:] + [
    ("sender_pos='END' on tensors", dict(sender_pos=lambda d: "END"), InputError, "needs a PromptSet"),
    ("sender_pos=1.5", dict(sender_pos=lambda d: 1.5), TypeError, "valid: None"),
    ("receiver_pos out of range", dict(receiver_pos=lambda d: 40), InputError, "outside"),
    ("receiver_pos of wrong shape", dict(receiver_pos=lambda d: torch.zeros(5, dtype=torch.long)), InputError,
     "one position per prompt"),
    ("sender_pos an int on prompts of different lengths", dict(clean=lambda d: d.ps_var, corrupt=lambda d: None,
     metric=lambda d: LogitDiff, sender_pos=lambda d: 2), InputError, "same_length=True"),
    ("senders not pairs", dict(senders=lambda d: [(0, 1.5)]), TypeError, "pairs of ints"),
    ("sender out of range", dict(senders=lambda d: [(9, 0)]), InputError, "out of range"),
    ("receivers a string", dict(receivers=lambda d: "heads"), InputError, "receivers must be"),
    ("max_senders_per_pass=0", dict(max_senders_per_pass=lambda d: 0), InputError, "max_senders_per_pass"),
    ("convention", dict(convention=lambda d: "ratio"), InputError, "convention must be one of"),
])  # fmt: skip
def test_path_patch(model, data, case, over, exc, fragment):
    _raises(model, _call(path_patch, _tensors(model, data), over, data), exc, fragment)


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), TOKENS + POSITIONS + OPTIONS + [
    ("component", dict(component=lambda d: "resid_pree"), ValueError, "unknown patching component"),
])  # fmt: skip
def test_attribution_patch(model, data, case, over, exc, fragment):
    _raises(model, _call(attribution_patch, _tensors(model, data), over, data), exc, fragment)


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), TOKENS + BUDGETS + OPTIONS[1:] + [
    ("steps_per_pass=-1", dict(ig_steps=lambda d: 4, steps_per_pass=lambda d: -1), InputError,
     "steps_per_pass must be >= 1"),
    ("steps_per_pass=0", dict(steps_per_pass=lambda d: 0), InputError, "steps_per_pass must be >= 1"),
    ("ig_steps=-1", dict(ig_steps=lambda d: -1), InputError, "ig_steps must be >= 0"),
    ("ig_steps=2.5", dict(ig_steps=lambda d: 2.5), TypeError, "ig_steps must be an int"),
    ("metric reads padding", dict(clean=lambda d: d.ps_var, corrupt=lambda d: None), InputError, "reads padding"),
])  # fmt: skip
def test_eap(model, data, case, over, exc, fragment):
    _raises(model, _call(eap, _tensors(model, data), over, data), exc, fragment)


def _circuit(position: str) -> Circuit:
    return Circuit(nodes=("a1.0",), groups={"g": ("a1.0",)}, positions={"a1.0": position})


GROUPS = _circuit("END")
CMAP = [
    ("tensors, not a PromptSet", dict(prompts=lambda d: d.clean), TypeError, "(needs|must be) a PromptSet"),
    ("metric not callable", dict(metric=lambda d: 3), TypeError, "metric must be"),
    ("metric reads padding", dict(prompts=lambda d: d.ps_var, metric=lambda d: d.metric), InputError,
     "reads padding in row 1"),
    ("budget=0", dict(budget=lambda d: 0), InputError, "budget must be a positive"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), CMAP + [
    ("unknown group position", dict(circuit=lambda d: _circuit("IO")), Exception, "IO"),
])  # fmt: skip
@pytest.mark.parametrize("entry", [cmap_output, cmap_input])
def test_cmap_output_and_input(model, data, entry, case, over, exc, fragment):
    base = dict(receiver=model, sender=model, prompts=data.ps, circuit=GROUPS, metric=LogitDiff)
    _raises(model, _call(entry, base, over, data), exc, fragment)


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), CMAP + [
    ("positions='12'", dict(positions=lambda d: "12"), InputError, "has positions"),
    ("positions=[1.7]", dict(positions=lambda d: [1.7]), TypeError, "is not a token index"),
    ("positions=[]", dict(positions=lambda d: []), InputError, "is empty"),
    ("positions out of range", dict(positions=lambda d: [0, 99]), InputError, "outside"),
    ("unknown name", dict(positions=lambda d: "S9"), InputError, "has positions"),
    ("'each' on prompts of different lengths", dict(prompts=lambda d: d.ps_var), InputError, "the rest 8"),
    ("per_head on a whole-layer site", dict(per_head=lambda d: True), ValueError, "does not fit"),
])  # fmt: skip
def test_cmap_sweep(model, data, case, over, exc, fragment):
    base = dict(receiver=model, sender=model, prompts=data.ps, component="resid_pre", metric=LogitDiff)
    _raises(model, _call(cmap_sweep, base, over, data), exc, fragment)


@pytest.mark.parametrize(
    ("case", "over", "exc", "fragment"), [c for c in CMAP if not c[0].startswith("budget")]
)
def test_evaluate_circuit(model, data, case, over, exc, fragment):
    base = dict(model=model, circuit=GROUPS, prompts=data.ps, metric=LogitDiff)
    _raises(model, _call(evaluate_circuit, base, over, data), exc, fragment)


TUCO = [
    ("float tokens", dict(tokens=lambda d: d.clean.float()), TypeError, "dtype torch.float32"),
    ("empty batch", dict(tokens=lambda d: d.clean[:0]), InputError, "is empty"),
    ("ids out of the vocabulary", dict(tokens=lambda d: d.clean + 1000), InputError, "vocabulary of"),
    ("mask row of zeros", dict(attention_mask=lambda d: torch.ones(B, T).index_fill_(0, torch.tensor([2]), 0)),
     InputError, "row 2 of the attention mask is all zeros"),
    ("mask of another shape", dict(attention_mask=lambda d: torch.ones(B, T + 1)), InputError,
     "must match the tokens' shape"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), TUCO)
def test_tuco(model, data, case, over, exc, fragment):
    base = dict(finetuned=model, base=model, tokens=data.clean)
    _raises(model, _call(tuco, base, over, data), exc, fragment)


@pytest.mark.parametrize(("case", "over", "exc", "fragment"), TUCO + [
    ("alpha=inf", dict(alpha=lambda d: float("inf")), ValueError, "finite number >= 0"),
    ("alpha=nan", dict(alpha=lambda d: float("nan")), ValueError, "finite number >= 0"),
    ("alpha<0", dict(alpha=lambda d: -0.5), ValueError, "finite number >= 0"),
    ("alpha=True", dict(alpha=lambda d: True), ValueError, "finite number >= 0"),
])  # fmt: skip
def test_scaled_logits(model, data, case, over, exc, fragment):
    base = dict(finetuned=model, base=model, tokens=data.clean, alpha=0.5)
    _raises(model, _call(scaled_logits, base, over, data), exc, fragment)


@pytest.mark.parametrize(("case", "prompts", "exc", "fragment"), [
    ("tensors, not a PromptSet", lambda d: d.clean, TypeError, "needs an interp PromptSet"),
    ("mask with an empty row", lambda d: _with_mask(d.ps, 1), InputError, "all zeros"),
])  # fmt: skip
def test_subspace_check_ccs(data, case, prompts, exc, fragment):
    with pytest.raises(exc, match=fragment):
        check_ccs(prompts(data))


def _with_mask(ps: PromptSet, empty_row: int):
    """`ps` with one row's mask zeroed (PromptSet itself refuses such a set, so this bypasses its check)."""
    bad = object.__new__(PromptSet)
    bad.__dict__.update(ps.__dict__)
    mask = ps.attention_mask.clone()
    mask[empty_row] = 0
    bad.__dict__["attention_mask"] = mask
    return bad


# --------------------------------------------------------------------------------------------- after compute
def test_non_finite_metric_values_name_the_cell_and_prompts(tiny_models, data):
    model = tiny_models("gpt2", "tl")
    kw = dict(clean=data.clean, corrupt=data.corrupt)
    with pytest.raises(NonFiniteError, match=r"the clean run: prompts 0, 1, 2"):
        patch_sweep(model, metric=_nan, **kw)
    with pytest.warns(RuntimeWarning, match="NaN or infinite") as rec:
        res = patch_sweep(model, metric=_nan, nonfinite="warn", **kw)
    assert len([w for w in rec if "NaN" in str(w.message)]) == 1  # warned once
    assert res.scores.isnan().all()
    b, ans = data.b, data.ans
    with torch.no_grad():  # the unpatched runs' logits: a patched run moves them, and the metric is NaN there
        seen = [model(t)[b, -1, ans] for t in (data.clean, data.corrupt)]

    def nan_when_patched(lg):
        v = lg[b, -1, ans]
        same = (v.detach() == seen[0]) | (v.detach() == seen[1])
        return torch.where(same, v, v * float("nan"))

    with pytest.raises(NonFiniteError, match=r"cell \(layer 0, pos 2:[^)]*\): prompts 0, 2;"):
        patch_sweep(model, metric=nan_when_patched, **kw)


def test_single_positions_are_one_column_of_the_full_sweep(tiny_models, data):
    model = tiny_models("gpt2", "tl")
    kw = dict(clean=data.clean, corrupt=data.corrupt, metric=data.metric)
    full = patch_sweep(model, **kw)
    three = patch_sweep(model, positions=3, **kw)
    some = patch_sweep(model, positions=[5, 2], **kw)
    assert three.scores.shape == (model.cfg.n_layers, 1) and three.labels["pos"] == [full.labels["pos"][3]]
    assert torch.allclose(three.scores[:, 0], full.scores[:, 3], atol=1e-6)
    assert torch.allclose(some.scores, full.scores[:, [5, 2]], atol=1e-6)
    named = patch_sweep(model, clean=data.ps, metric=LogitDiff, positions="S2")
    assert named.labels["pos"] == ["S2"] and named.config.positions == "S2"
    by_index = patch_sweep(model, clean=data.ps, metric=LogitDiff, positions=3)
    assert torch.allclose(named.scores, by_index.scores, atol=1e-6)
