"""The circuit experiments end to end on a tiny random model (config override; the organisms are the defaults)."""

import json

import pytest
from helpers import interrupted_then_resumed


@pytest.fixture(scope="module")
def tiny_task_model(tmp_path_factory):
    from interp.models.tiny import build_tiny_checkpoint
    from interp.models.tokenizer import build_word_tokenizer
    from interp.tasks import vocabulary

    return build_tiny_checkpoint(
        "gpt2",
        tmp_path_factory.mktemp("task") / "gpt2",
        build_word_tokenizer(vocabulary()),
        n_layers=3,
        n_heads=2,
        d_model=32,
    )


def test_ioi_circuit_runs(tiny_task_model, tmp_path, monkeypatch):
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")  # no browser start-up for static images
    cfg = {
        "experiment": "ioi_circuit",
        "model": str(tiny_task_model),
        "n_prompts": 12,
        "n_eval": 12,
        "ig_steps": 2,
        "random_draws": 2,
        "fractions": [0.0, 0.1, 1.0],
    }
    res = run_experiment(cfg, tmp_path / "run")
    assert {"faithfulness", "circuit_heads", "total_heads", "eap_ig_cpr", "eap_ig_cmd"} <= set(res)
    assert res["total_heads"] == 6 and 0 <= res["circuit_heads"] <= 6
    assert (tmp_path / "run" / "figures" / "ioi_circuit.html").exists()
    circuit = json.loads((tmp_path / "run" / "tables" / "circuit.json").read_text())
    assert len(circuit["nodes"]) == res["circuit_heads"] >= res["search_heads"]
    assert res["circuit_accuracy"] is not None and "eap_ig_edges_for_accuracy" in res
    assert circuit.get("positions", {}) == {}  # complete_positions="all": every head kept at every position
    again = run_experiment(cfg, tmp_path / "run")  # resumes from the stored steps
    assert again == res
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["status"] == "finished" and prov["steps_run"] == [] and prov["steps_skipped"]
    killed, done, _ = interrupted_then_resumed(cfg, tmp_path / "killed", after_steps=2)
    assert killed == res and done == ["model", "path_patching"]


def test_ioi_circuit_config_rejects_bad_values():
    from interp.config import ConfigError
    from interp.experiments.ioi_circuit import IOICircuitConfig

    with pytest.raises(ConfigError, match="complete_positions: 'end' is not valid. Valid: 'all', 'stage'"):
        IOICircuitConfig(complete_positions="end")
    with pytest.raises(ConfigError, match="completion: 'sideways' is not valid"):
        IOICircuitConfig(completion="sideways")
    assert IOICircuitConfig(complete_positions="stage").complete_positions == "stage"


def test_circuit_reuse_runs(tiny_task_model, tmp_path, monkeypatch):
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")
    cfg = {
        "experiment": "circuit_reuse",
        "model": str(tiny_task_model),
        "n_prompts": 8,
        "n_eval": 8,
        "k": 1,
        "fraction": 0.1,
        "min_per_stage": 1,
    }
    res = run_experiment(cfg, tmp_path / "run")
    assert {"overlap", "cobj_acc_before", "cobj_acc_after", "jaccard"} <= set(res)
    assert run_experiment(cfg, tmp_path / "run") == res
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["status"] == "finished" and prov["steps_run"] == [] and prov["steps_skipped"]
    killed, done, _ = interrupted_then_resumed(cfg, tmp_path / "killed", after_steps=1)
    assert killed == res and done == ["stage_scores"]
    assert 0 <= res["cobj_acc_before"] <= 1 and 0 <= res["cobj_acc_after"] <= 1
    with pytest.raises(ValueError, match="distractor positions"):
        run_experiment({**cfg, "distractor_positions": ["nowhere"]}, tmp_path / "run2")
    copy = run_experiment(
        {
            **cfg,
            "second_task": "copy",
            "second_task_options": {"length": 6, "query": 4},
            "distractor_positions": ["prev"],
            "accuracy_over": "vocab",
            "role_positions": {
                "s_inhibition": ["prev"],
                "s1_next_reader": ["prev+1"],
                "diffuse": ["answer_pos"],
            },
        },
        tmp_path / "run3",
    )
    assert copy["second_task"] == "copy" and copy["intervention"] == "by IOI role"
    assert {"cobj_acc_before", "cobj_acc_after", "acc_after_distractor_attention"} <= set(copy)


def test_copy_prompts(word_tokenizer):
    from interp.models.tokenizer import build_word_tokenizer
    from interp.tasks import vocabulary
    from interp.tasks.copying import copy_prompts

    tok = build_word_tokenizer(vocabulary())
    ps = copy_prompts(tok, 6, seed=0, length=6, query=4)
    for i in range(6):
        row = ps.clean[i]
        prev, ans, end = (int(ps.positions[k][i]) for k in ("prev", "answer_pos", "END"))
        assert row[prev] == row[end] and ans == prev + 1 and row[ans] == ps.answer_ids[i]
        diff = (ps.clean[i] != ps.corrupt[i]).nonzero().flatten().tolist()
        assert diff == [ans] and ps.corrupt[i, ans] == ps.wrong_ids[i]
