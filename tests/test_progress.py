"""Progress bars: shown when asked (cells done / total), silent with progress=False or INTERP_PROGRESS=0."""

import pytest
from helpers import last_logit_diff, swap_batch

from interp import progress
from interp.patching import patch_sweep


def test_switches(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    assert progress.enabled() is False and progress.enabled(True) is True
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled() in (None, True) and progress.enabled(False) is False
    assert isinstance(progress.progress_bar(10, "x", progress=False), progress._Silent)
    with pytest.raises(TypeError, match="progress must be"):
        progress.enabled("yes")


def test_sweep_bar_counts_cells(tiny_models, monkeypatch, capsys):
    import interp.patching.sweep as sweep

    monkeypatch.setattr(progress, "DELAY", 0.0)
    bars = []

    def recording(*a, **k):
        bars.append(progress.progress_bar(*a, **k))
        return bars[-1]

    monkeypatch.setattr(sweep, "progress_bar", recording)
    clean, corrupt, ans, wrong = swap_batch(2, 5, seed=0, swap_at=(2,))
    model = tiny_models("gpt2", "tl")
    kw = dict(clean=clean, corrupt=corrupt, metric=last_logit_diff(ans, wrong), skip_noops=False)
    patch_sweep(model, progress=True, **kw)
    cells = model.cfg.n_layers * 5
    assert bars[-1].total == cells and bars[-1].n == cells  # every cell counted
    assert f"patch_sweep resid_pre:   0%|          | 0/{cells}" in capsys.readouterr().err
    monkeypatch.setenv(progress.ENV, "0")
    patch_sweep(model, **kw)
    assert isinstance(bars[-1], progress._Silent) and "patch_sweep" not in capsys.readouterr().err
