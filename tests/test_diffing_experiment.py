"""The `model_diff` experiment end to end on tiny stand-ins for the organisms: contract, resumption, bad input."""

import json

import pytest

from interp.config import ConfigError

TINY = {
    "n_pretrain": 24,
    "n_chat": 24,
    "n_task": 6,
    "max_length": 48,
    "top_positions": 10,
    "top_tokens": 10,
    "relevance_docs": 200,
    "steer_prompts": 4,
    "steer_new_tokens": 3,
    "steer_alphas": [1.0],
    "patchscope_scales": [1.0],
    "layer": 1,
    "d_sae": 16,
    "k": 4,
    "steps": 12,
    "batch_size": 64,
    "n_behaviour": 6,
    "n_latents": 3,
}


@pytest.fixture(scope="module")
def tiny_zoo(organism_like, tmp_path_factory):
    from interp.finetuning.pair import perturbed_twin

    control = perturbed_twin(
        organism_like["base"], tmp_path_factory.mktemp("md") / "control", scale=0.01, seed=5
    )
    return {"base": str(organism_like["base"]), "ft": str(organism_like["ft"]), "control": str(control)}


def _config(tiny_zoo, **over):
    return {
        "experiment": "model_diff",
        "base": tiny_zoo["base"],
        "pairs": {"chat": tiny_zoo["ft"]},
        "control": tiny_zoo["control"],
        **TINY,
        **over,
    }


def test_model_diff_runs_resumes_and_keeps_its_contract(tiny_zoo, tmp_path, monkeypatch):
    from interp.experiments.model_diff import METHODS
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")
    res = run_experiment(_config(tiny_zoo), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk == res and on_disk["methods"] == list(METHODS)
    assert set(on_disk["ft"]) == set(METHODS) and set(on_disk["control"]) == set(METHODS)
    scores = [v for v in on_disk["control"].values() if v is not None]
    assert on_disk["control_max_score"] == max(scores)
    assert (tmp_path / "run" / "figures" / "scores.html").exists()
    assert (tmp_path / "run" / "tables" / "mined_positions_ft.csv").exists()
    assert (tmp_path / "run" / "diffs" / "ft" / "crosscoder" / "crosscoder.json").exists()
    again = run_experiment(_config(tiny_zoo), tmp_path / "run")  # every step is loaded
    assert again == res
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["steps_run"] == [] and "pair_ft" in prov["steps_skipped"]


def test_model_diff_refuses_bad_input_before_compute(tiny_zoo, tiny_dirs, tmp_path):
    from interp.finetuning.pair import PairMismatchError
    from interp.runner import run_experiment

    with pytest.raises(ConfigError, match="unknown change"):
        run_experiment(_config(tiny_zoo, pairs={"poetry": tiny_zoo["ft"]}), tmp_path / "a")
    with pytest.raises(ConfigError, match="steps"):
        run_experiment(_config(tiny_zoo, steps=0), tmp_path / "b")
    with pytest.raises(ValueError, match="layer=7 is out of range"):
        run_experiment(_config(tiny_zoo, layer=7), tmp_path / "c")
    with pytest.raises(PairMismatchError, match="mismatch"):
        run_experiment(_config(tiny_zoo, control=str(tiny_dirs["llama"])), tmp_path / "d")
    assert not (tmp_path / "c" / "steps").exists() and not (tmp_path / "d" / "steps").exists()
