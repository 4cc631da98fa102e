"""The shipped experiment kinds as runs: `ioi_patching` end to end on a tiny model (resumed after SIGTERM, rerun
with nothing to do), and every config value refused before anything loads, with the key, value and valid ones."""

import json

import pytest
from helpers import interrupted_then_resumed

from interp.config import ConfigError


def test_ioi_patching_resumes_step_by_step(organism_like, tmp_path, monkeypatch):
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")
    cfg = {"experiment": "ioi_patching", "model": str(organism_like["base"]), "n_prompts": 4}
    res = run_experiment(cfg, tmp_path / "run")
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    steps = ["patch_resid_pre", "patch_attn_out", "patch_mlp_out", "patch_heads", "path_patch_logits"]
    assert prov["steps_run"] == [*steps, "attribution"] and prov["status"] == "finished"
    assert {"resid_pre_max", "path_patch_top_heads", "atp_spearman_heads"} <= set(res)
    assert run_experiment(cfg, tmp_path / "run") == res  # nothing to do: every step is loaded
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["steps_run"] == [] and prov["steps_skipped"] == [*steps, "attribution"]
    assert [a["status"] for a in prov["attempts"]] == ["finished", "finished"]
    killed, done, resumed = interrupted_then_resumed(cfg, tmp_path / "killed", after_steps=2)
    assert killed == res and done == steps[:2]
    assert resumed["steps_run"] == [*steps[2:], "attribution"]
    assert [a["status"] for a in resumed["attempts"]] == ["interrupted", "finished"]


BAD = [
    ({"n_prompts": 0}, "ioi_patching.n_prompts: 0 must be > 0"),
    ({"template": 99}, "ioi_patching.template: 99 is not valid. Valid: 0..14"),
    ({"backend": "jax"}, "ioi_patching.backend: 'jax' is not valid. Valid: 'tl', 'nnsight'"),
    ({"model": "organism/nope"}, "ioi_patching.model: 'organism/nope' is not a built zoo entry"),
    ({"model": "./no/such/folder"}, "is not an existing checkpoint folder"),
    ({"model": "not a model!"}, "is neither a zoo name"),
    ({"components": ["resid_pre", "bogus"]}, "has item [1] = 'bogus' that is not valid"),
    ({"components": []}, "ioi_patching.components: () must not be empty"),
    ({"seed": -1}, "run settings.seed: -1 must be >= 0"),
    ({"seed": 1.5}, "run settings.seed: expected int"),
    ({"n_promts": 8}, "unknown key 'n_promts' for IOIPatchingConfig. Did you mean 'n_prompts'?"),
]


@pytest.mark.parametrize(("override", "message"), BAD)
def test_bad_values_are_refused_when_the_config_is_read(override, message):
    from interp.runner import resolve_config

    with pytest.raises(ConfigError) as err:
        resolve_config({"experiment": "ioi_patching", **override})
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("kind", "override", "message"),
    [
        ("tuco", {"n_generate": -1}, "tuco.n_generate: -1 must be > 0"),
        ("finetune_cmap", {"variant": "medium"}, "finetune_cmap.variant: 'medium' is not valid"),
        ("circuit_reuse", {"second_task": "cooking"}, "Valid: 'ioi', 'colored_objects'"),
        ("circuit_reuse", {"role_positions": {"hero": ["END"]}}, "names role 'hero'"),
        ("ioi_circuit", {"completion": "sideways"}, "Valid: 'backward', 'forward'"),
        ("context_knob", {"settings": ["ctx"]}, "Did you mean 'context'?"),
        ("context_knob", {"c_values": [1.0, 2.0]}, "needs a negative and a positive value"),
        ("sae_data_selection", {"families": ["ioi", "nope"]}, "'nope' that is an unknown family"),
        ("sae_data_selection", {"ratios": [0.05, 1.5]}, "1.5 that must lie in (0, 1]"),
        ("sae_data_selection", {"model": "tiny:jax"}, "names no tiny architecture"),
    ],
)
def test_every_kind_checks_its_values(kind, override, message):
    from interp.runner import resolve_config

    with pytest.raises(ConfigError) as err:
        resolve_config({"experiment": kind, **override})
    assert message in str(err.value)
