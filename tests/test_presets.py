"""Config presets, `--model-map` and `--set` (the runner and CLI), and every shipped experiment's `paper` preset
run end to end through `interp run` on tiny random stand-ins of its hub models (issue 14 item 5).

The stand-ins have the hub model's architecture and a realistic tokenizer: GPT-2's byte-level BPE for GPT-2
presets, the SentencePiece-style fixture for Llama presets; a perturbed twin plays the fine-tune, a random TopK
SAE in sparsify format the EleutherAI SAE, and local folders laid out as the hub's datasets the pool and targets.
Only sizes (n, the layer of a knob or SAE the 4-layer stand-ins do not have) are overridden with `--set`;
numbers are not judged, the path is: the run completes and writes its results keys, tables and figures.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from interp.cli import app
from interp.config import ConfigError, model_fields, model_name, param
from interp.experiments import get_experiment
from interp.runner import Run, parse_assignments, register_experiment, resolve_config, run_experiment

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
cli = CliRunner()


# ------------------------------------------------------------------------------------- the mechanism
@dataclasses.dataclass(frozen=True, kw_only=True)
class PresetConfig:
    model: str = param("organism/base", check=model_name)
    others: tuple[str, ...] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    n: int = param(3, check=lambda v: None if v > 0 else "must be > 0")
    dtype: str = "float16"


@register_experiment("_test_presets", config=PresetConfig)
def preset_experiment(cfg: PresetConfig, run: Run) -> dict[str, Any]:
    """Echo the parameters."""
    return {"model": cfg.model, "n": run.step("n", lambda: cfg.n), "dtype": cfg.dtype}


def _config(**presets: dict[str, Any]) -> dict[str, Any]:
    return {"experiment": "_test_presets", "n": 2, "presets": presets}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "local-gpt2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_preset_is_laid_over_the_config_and_recorded(tmp_path: Path, checkpoint: Path) -> None:
    raw = _config(paper={"model": "gpt2", "n": 5, "others": ["gpt2", "gpt2-medium"]})
    # without a preset: as if the config had no presets block at all
    plain = resolve_config(raw)
    without = {k: v for k, v in raw.items() if k != "presets"}
    assert plain.to_dict() == resolve_config(without).to_dict() and "preset" not in plain.to_dict()
    paper = resolve_config(raw, preset="paper")
    assert (paper.params.model, paper.params.n, paper.params.others) == ("gpt2", 5, ("gpt2", "gpt2-medium"))
    assert paper.to_dict()["preset"] == "paper"
    mapped = {"gpt2": str(checkpoint)}
    res = run_experiment(raw, tmp_path / "run", preset="paper", model_map=mapped, overrides={"n": 7})
    assert res == {"model": str(checkpoint), "n": 7, "dtype": "float16"}
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["preset"] == "paper" and written["model"] == str(checkpoint)
    assert written["others"] == [str(checkpoint), "gpt2-medium"]  # inside lists too; other names kept
    overlays = json.loads((tmp_path / "run" / "provenance.json").read_text())["overlays"]
    assert overlays == {"preset": "paper", "overrides": {"n": 7}, "model_map": mapped}
    # the resolved config.yaml runs again as it is (its `preset:` is a record): the same run, resumed
    again = run_experiment(tmp_path / "run" / "config.yaml", tmp_path / "run")
    assert again == res
    # a config may pin its preset; --preset overrides the pin
    assert resolve_config({**raw, "preset": "paper"}).params.n == 5
    raw2 = _config(paper={"n": 5}, quick={"n": 1})
    assert resolve_config({**raw2, "preset": "paper"}, preset="quick").params.n == 1


def test_model_map_replaces_values_in_nested_mappings(checkpoint: Path) -> None:
    raw = _config(paper={"options": {"teacher": "gpt2", "layers": [1, 2]}, "others": ["gpt2"]})
    cfg = resolve_config(raw, preset="paper", model_map={"gpt2": str(checkpoint)}).params
    assert cfg.options == {"teacher": str(checkpoint), "layers": [1, 2]} and cfg.others == (str(checkpoint),)
    assert cfg.model == "organism/base"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"preset": "papr"},
            r"unknown preset 'papr'\. Did you mean 'paper'\? Valid presets: paper, quick, bad\.",
        ),
        ({"overrides": {"nn": 1}}, r"--set: unknown key 'nn' for PresetConfig\. Did you mean 'n'\?"),
        ({"overrides": {"n": 0}}, r"_test_presets\.n: 0 must be > 0 \(set by --set\)"),
        ({"overrides": {"experiment": "x"}}, r"--set: may not set 'experiment'"),
        ({"preset": "quick"}, r"_test_presets\.n: -1 must be > 0 \(set by preset 'quick'\)"),
        ({"preset": "bad"}, r"preset 'bad': unknown key 'modle' for PresetConfig\. Did you mean 'model'\?"),
        (
            {"preset": "paper", "model_map": {"gtp2": "/x"}},
            r"--model-map gtp2: no config value is 'gtp2'\. Model names in this config: gpt2\.",
        ),
        (
            {"preset": "paper", "model_map": {"gpt2": "/no/such/folder"}},
            r"_test_presets\.model: '/no/such/folder' is not an existing checkpoint folder "
            r"\(set by --model-map gpt2\)",
        ),
    ],
)
def test_bad_presets_overrides_and_maps_fail_before_compute(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    raw = _config(paper={"model": "gpt2"}, quick={"n": -1}, bad={"modle": "gpt2"})
    with pytest.raises(ConfigError, match=message):
        run_experiment(raw, tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_preset_needs_a_presets_block_and_presets_must_be_mappings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--preset paper: this config has no `presets:` block"):
        resolve_config({"experiment": "_test_presets"}, preset="paper")
    with pytest.raises(ConfigError, match="`presets:` must map preset names to mappings"):
        resolve_config({"experiment": "_test_presets", "presets": {"paper": ["n", 3]}}, preset="paper")


def test_assignments_are_parsed_as_yaml() -> None:
    items = ["n=4", "fractions=[0, 0.5]", "das_layer=null", "dtype=float32", "options={a: 1}", "s=a=b"]
    assert parse_assignments(items, flag="--set", parse_values=True) == {
        "n": 4,
        "fractions": [0, 0.5],
        "das_layer": None,
        "dtype": "float32",
        "options": {"a": 1},
        "s": "a=b",
    }
    assert parse_assignments(["gpt2=/m/gpt2"], flag="--model-map", parse_values=False) == {"gpt2": "/m/gpt2"}
    with pytest.raises(ConfigError, match=r"--set 'n': expected KEY=VALUE"):
        parse_assignments(["n"], flag="--set", parse_values=True)
    with pytest.raises(ConfigError, match=r"--set n: given twice"):
        parse_assignments(["n=1", "n=2"], flag="--set", parse_values=True)
    with pytest.raises(ConfigError, match=r"--set 'f=\[0': the value is not valid YAML"):
        parse_assignments(["f=[0"], flag="--set", parse_values=True)


def test_cli_flags_and_one_line_errors(tmp_path: Path, checkpoint: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump(_config(paper={"model": "gpt2", "n": 5})))
    out = tmp_path / "run"
    args = ["run", str(config), "--out", str(out), "--preset", "paper", "--model-map", f"gpt2={checkpoint}"]
    result = cli.invoke(app, [*args, "--set", "n=6", "--set", "dtype=float32"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text()) == {
        "model": str(checkpoint),
        "n": 6,
        "dtype": "float32",
    }
    result = cli.invoke(app, ["run", str(config), "--out", str(tmp_path / "r2"), "--preset", "nope"])
    assert result.exit_code == 2 and "error: unknown preset 'nope'" in result.output
    assert "Valid presets: paper" in result.output and "Traceback" not in result.output


def test_a_parameter_added_since_a_run_does_not_block_resuming_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_experiment({"experiment": "_test_presets"}, out)
    old = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in old.items() if k != "dtype"}))
    assert run_experiment({"experiment": "_test_presets"}, out)["dtype"] == "float16"  # the default: resumed
    (out / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in old.items() if k != "dtype"}))
    with pytest.raises(ConfigError, match=r"dtype: None -> 'float32'"):
        run_experiment({"experiment": "_test_presets", "dtype": "float32"}, out)


def test_model_fields_are_found_by_their_checks() -> None:
    assert model_fields(PresetConfig) == ["model"]
    assert model_fields(get_experiment("context_knob").config) == ["model", "base", "transfer_to", "compare"]
    assert model_fields(get_experiment("sae_data_selection").config) == ["model", "sae"]


# --------------------------------------------------------------------------- the hub presets' stand-ins
@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints with realistic tokenizers, a fine-tune twin, a sparsify SAE, two hub datasets."""
    from fixtures import gpt2_bpe, sentencepiece

    from interp.finetuning.pair import perturbed_twin
    from interp.models.tiny import build_tiny_checkpoint
    from interp.selection.sae import random_topk_sae, save_sparsify

    root = tmp_path_factory.mktemp("hub")
    shape = {"n_layers": 4, "n_heads": 4, "d_model": 64}
    gpt2 = build_tiny_checkpoint("gpt2", root / "gpt2", gpt2_bpe(), **shape)
    llama = build_tiny_checkpoint("llama", root / "llama", sentencepiece(), n_ctx=256, **shape)
    llama_ft = perturbed_twin(llama, root / "llama-ft", scale=0.05)
    # an EleutherAI-style sparsify repo: one folder per hookpoint, cfg.json without a hook name
    sae = save_sparsify(
        random_topk_sae(64, 256, 8, "blocks.2.hook_resid_post", seed=1), root / "sae" / "layers.2"
    )
    cfg = json.loads((sae / "cfg.json").read_text())
    del cfg["hook_name"]
    (sae / "cfg.json").write_text(json.dumps(cfg))
    return {"gpt2": gpt2, "llama": llama, "llama-ft": llama_ft, "sae": sae.parent, **_hub_datasets(root)}


def _hub_datasets(root: Path) -> dict[str, Path]:
    """Local folders laid out as teknium/OpenHermes-2.5 (one JSON file of conversations with a `source`) and
    openai/gsm8k (a `main` config declared in the README, question/answer rows)."""
    rng = random.Random(0)
    rows = []
    for i in range(60):
        math = i % 4 == 0
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        turns = (
            [f"What is {a} plus {b} ?", f"It is {a + b} ."] if math else ["Tell me about cooking .", "Sure ."]
        )
        rows.append(
            {
                "conversations": [{"from": "human", "value": turns[0]}, {"from": "gpt", "value": turns[1]}],
                "source": "metamath" if math else "airoboros",
            }
        )
    hermes = root / "openhermes"
    hermes.mkdir()
    (hermes / "openhermes2_5.json").write_text(json.dumps(rows))
    gsm8k = root / "gsm8k"
    (gsm8k / "main").mkdir(parents=True)
    lines = [
        json.dumps({"question": f"What is {i} plus 2 ?", "answer": f"It is {i + 2} .\n#### {i + 2}"})
        for i in range(10)
    ]
    (gsm8k / "main" / "train.jsonl").write_text("\n".join(lines) + "\n")
    (gsm8k / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train.jsonl\n---\n"
    )
    return {"openhermes": hermes, "gsm8k": gsm8k}


@dataclasses.dataclass(frozen=True)
class Case:
    """One shipped experiment's paper preset: its hub names -> stand-ins, the small-n overrides, and what the
    run must write (the results keys named in the issue that built it, its tables and figures)."""

    model_map: Callable[[dict[str, Path]], dict[str, Path]]
    overrides: dict[str, str]
    results: tuple[str, ...]
    tables: tuple[str, ...]
    figures: tuple[str, ...]


IOI_CIRCUIT = Case(
    model_map=lambda s: {"gpt2": s["gpt2"]},
    overrides={
        "n_prompts": "4",
        "n_eval": "4",
        "ig_steps": "1",
        "random_draws": "1",
        "fractions": "[0.0, 0.5, 1.0]",
    },
    results=(
        "faithfulness",
        "circuit_heads",
        "total_heads",
        "logit_diff",
        "accuracy",
        "eap_ig_cpr",
        "eap_ig_cmd",
    ),
    tables=(
        "path_patching_scores",
        "head_classes",
        "attention_all_heads",
        "eap_ig_top_edges",
        "eap_ig_curve",
    ),
    figures=("ioi_circuit", "path_patching_stages", "head_attention", "eap_ig_curve", "eap_ig_circuit"),
)
FINETUNE_CMAP_KEYS = (
    "base_acc",
    "ft_acc",
    "base_circuit_faithfulness",
    "base_circuit_acc_in_ft",
    "cmap_best_group",
    "cmap_base_acc_after",
)
CMAP_FIGURES = ("cmap_output", "cmap_sweep_attn_out", "cmap_sweep_mlp_out")
CASES: dict[str, Case] = {
    "ioi_patching": Case(
        model_map=lambda s: {"gpt2": s["gpt2"]},
        overrides={"n_prompts": "4"},
        results=(
            "model",
            "resid_pre_max",
            "attn_out_max",
            "mlp_out_max",
            "ld_clean",
            "ld_corrupt",
            "path_patch_top_heads",
            "path_patch_top_score",
            "atp_spearman_heads",
        ),
        tables=("patch_resid_pre", "patch_attn_out", "patch_mlp_out", "path_patch_logits"),
        figures=("patch_resid_pre", "patch_attn_out", "patch_mlp_out", "patch_heads", "path_patch_logits"),
    ),
    "ioi_circuit": IOI_CIRCUIT,
    "ioi_circuit_rope": IOI_CIRCUIT,
    "circuit_reuse": Case(
        model_map=lambda s: {"gpt2-medium": s["gpt2"]},
        overrides={"n_prompts": "4", "n_eval": "4"},
        results=("overlap", "cobj_acc_before", "cobj_acc_after", "jaccard", "intervened_heads"),
        tables=("stage_scores",),
        figures=("stage_scores",),
    ),
    "finetune_cmap": Case(
        model_map=lambda s: {"huggyllama/llama-7b": s["llama"], "lmsys/vicuna-7b-v1.3": s["llama-ft"]},
        overrides={"n_prompts": "4", "n_random": "1"},
        results=FINETUNE_CMAP_KEYS,
        tables=("cmap", "circuit"),
        figures=(*CMAP_FIGURES, "path_patching_name_movers"),
    ),
    "finetune_cmap_et": Case(
        model_map=lambda s: {"huggyllama/llama-7b": s["llama"], "tiedong/goat-lora-7b": s["llama-ft"]},
        overrides={"n_prompts": "4", "n_random": "1", "n_dcm": "8"},
        results=(*FINETUNE_CMAP_KEYS, "circuit_overlap", "dcm_test_accuracy", "base_acc_b7"),
        tables=("cmap", "circuit", "dcm"),
        figures=(*CMAP_FIGURES, "path_patching_value_fetcher"),
    ),
    "tuco": Case(
        model_map=lambda s: {
            "meta-llama/Llama-2-7b-hf": s["llama"],
            "meta-llama/Llama-2-7b-chat-hf": s["llama-ft"],
        },
        overrides={"n_chat": "8", "n_pretrain": "8", "n_generate": "2", "n_layer_profile": "4"},
        results=("auc_chat_vs_pretrain", "auc_forbidden_vs_allowed", "refusal_rate_by_alpha"),
        tables=("chat_tuco", "refusal_by_alpha"),
        figures=("tuco_chat_vs_pretrain", "tuco_forbidden_vs_allowed", "refusal_by_alpha", "tuco_by_layer"),
    ),
    "context_knob": Case(
        model_map=lambda s: {
            "meta-llama/Llama-3.1-8B-Instruct": s["llama-ft"],
            "meta-llama/Llama-3.1-8B": s["llama"],
        },
        # the paper's layer 16 is beyond the 4-layer stand-in; a random model answers no pair confidently
        overrides={
            "n_train_pairs": "8",
            "n_test_pairs": "8",
            "n_search_pairs": "4",
            "das_layer": "1",
            "confident_only": "false",
        },
        results=(
            "layer_range",
            "layer_search_runs",
            "das_layer",
            "interchange_acc",
            "steer_context_share",
            "steer_prior_share",
            "transfer_context_share",
            "transfer_prior_share",
            "pair_acc_ft",
            "pair_acc_base",
        ),
        tables=("layer_search_trace", "steering", "separation"),
        figures=("layer_search_trace", "das_training", "steering_curve", "separation_histogram"),
    ),
    "model_diff": Case(
        model_map=lambda s: {
            "meta-llama/Llama-3.2-1B": s["llama"],
            "meta-llama/Llama-3.2-1B-Instruct": s["llama-ft"],
        },
        overrides={
            "layer": "1",
            "d_sae": "32",
            "k": "4",
            "steps": "20",
            "batch_size": "64",
            "n_pretrain": "16",
            "n_chat": "16",
            "n_task": "4",
            "n_behaviour": "8",
            "steer_prompts": "2",
            "steer_new_tokens": "3",
            "steer_alphas": "[1.0]",
            "relevance_docs": "50",
        },
        results=("methods", "control_max_score"),
        tables=(),
        figures=(),
    ),
    "sae_data_selection": Case(
        model_map=lambda s: {
            "meta-llama/Meta-Llama-3-8B": s["llama"],
            "EleutherAI/sae-llama-3-8b-32x": s["sae"],
            "teknium/OpenHermes-2.5": s["openhermes"],
            "openai/gsm8k": s["gsm8k"],
        },
        # the stand-in's penultimate layer (the paper's layers.30 of 32); ratios that select from 40 rows
        overrides={
            "sae_id": "layers.2",
            "pool_size": "40",
            "n_targets": "4",
            "ratios": "[0.1]",
            "main_ratio": "0.1",
        },
        results=("precision", "pool_size", "n_targets", "target_share"),
        tables=("precision",),
        figures=("precision",),
    ),
}


def test_every_shipped_experiment_has_a_paper_preset_and_a_case() -> None:
    shipped = sorted(p.parent.name for p in EXPERIMENTS.glob("*/config.yaml"))
    assert sorted(CASES) == shipped
    for name in shipped:
        raw = yaml.safe_load((EXPERIMENTS / name / "config.yaml").read_text())
        assert "paper" in raw.get("presets", {}), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_paper_preset_runs_on_its_stand_in(
    name: str, standins: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    model_map = {hub: str(folder) for hub, folder in case.model_map(standins).items()}
    out = tmp_path / "run"
    args = ["run", str(EXPERIMENTS / name), "--preset", "paper", "--out", str(out), "--debug"]
    args += [a for hub, folder in model_map.items() for a in ("--model-map", f"{hub}={folder}")]
    args += [a for key, value in case.overrides.items() for a in ("--set", f"{key}={value}")]
    result = cli.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output

    results = json.loads((out / "results.json").read_text())
    assert [k for k in case.results if k not in results] == []
    assert {p.stem for p in (out / "figures").glob("*.html")} >= set(case.figures)
    assert {p.stem for p in (out / "tables").glob("*.csv")} >= set(case.tables)
    # the resolved config: the preset's keys (hub names replaced by the stand-ins), the overrides, no hub name
    written = yaml.safe_load((out / "config.yaml").read_text())
    preset = yaml.safe_load((EXPERIMENTS / name / "config.yaml").read_text())["presets"]["paper"]
    assert written["preset"] == "paper"
    for key, value in preset.items():
        if key not in case.overrides:
            want = (
                model_map.get(value, value)
                if isinstance(value, str)
                else {k: model_map.get(v, v) if isinstance(v, str) else v for k, v in value.items()}
                if isinstance(value, dict)
                else value
            )
            assert written[key] == want, key
    assert not set(model_map) & {v for v in written.values() if isinstance(v, str)}
    overlays = json.loads((out / "provenance.json").read_text())["overlays"]
    assert overlays["preset"] == "paper" and overlays["model_map"] == model_map
    assert overlays["overrides"] == {k: yaml.safe_load(v) for k, v in case.overrides.items()}
    if name == "tuco":  # an object from alpha to rate, over the preset's alphas
        assert set(results["refusal_rate_by_alpha"]) == {"0", "0.5", "0.75", "1", "1.25", "1.5"}
    if name == "sae_data_selection":  # the pool's labels came from the mapped OpenHermes folder
        assert set(results["precision"]) == {"sae_jaccard", "sae_cosine", "raw_cosine", "bm25", "random"}
        assert results["pool_size"] == 40 and results["target_share"] > 0
