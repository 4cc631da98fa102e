"""Build one organism from its recipe: train (from scratch or from the committed parent), measure, check, save.

A build writes to `<folder>.new`, measures the battery, checks the recipe's targets and only then replaces the
committed folder; a missed target raises `BuildError` and leaves the attempt in `<folder>.failed` for inspection.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from interp.zoo.organisms import RECIPES, SAES, Recipe
from interp.zoo_location import folder_of

QUICK = ("ioi", "facts", "copy")  # measured every eval_every steps during training


class BuildError(RuntimeError):
    """An organism missed a behaviour target (the message lists every target with its measured number)."""


def model_config(arch: str, tok, n_layers: int, n_heads: int, d_model: int, n_ctx: int, n_kv_heads: int = 2):
    """The `transformers` config of a from-scratch organism (dropout off, GPT-2 with n_ctx = n_positions)."""
    import transformers as tf

    ids = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "gpt2":
        return tf.GPT2Config(
            n_layer=n_layers,
            n_head=n_heads,
            n_embd=d_model,
            n_positions=n_ctx,
            n_ctx=n_ctx,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    if arch == "llama":
        return tf.LlamaConfig(
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads,
            hidden_size=d_model,
            intermediate_size=3 * d_model,
            head_dim=d_model // n_heads,
            max_position_embeddings=n_ctx,
            tie_word_embeddings=False,
            **ids,
        )
    raise ValueError(f"unknown organism architecture {arch!r}; valid: gpt2, llama")


def quick_check(model, tok, metrics: list[str]) -> dict:
    """The card's small fixed re-check: the battery parts of `metrics` on CHECK_N prompts each (tests re-run it)."""
    from interp.zoo.evaluate import CHECK_N, check_parts, evaluate

    parts = check_parts(metrics)
    return {"parts": list(parts), "n": CHECK_N, "scores": evaluate(model, tok, parts, CHECK_N)}


def read_card(folder: Path) -> dict:
    path = folder / "card.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no card.json: build it with `interp zoo build --only ...`")
    return json.loads(path.read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _log(name: str):
    def log(msg: str) -> None:
        print(f"[{name}] {msg}", flush=True)

    return log


def check_targets(recipe: Recipe, scores: dict[str, float], root: Path | None = None) -> list[dict]:
    """Every target of `recipe` against `scores` (relative ones against the parent's committed card)."""
    results = []
    for t in recipe.targets:
        ref_name = t.reference or recipe.parent
        reference = None
        if t.relative and ref_name:
            ref_folder = folder_of(ref_name) if root is None else Path(root) / folder_of(ref_name).name
            reference = read_card(ref_folder)["scores"]
        ok, text = t.check(scores, reference)
        results.append({**t.to_dict(), "passed": ok, "check": text})
    return results


def build_organism(name: str, *, root: Path | None = None) -> dict:
    """Train, measure and save organism `name`; return its card. Raises BuildError if a target is missed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.models.tokenizer import build_word_tokenizer
    from interp.zoo.corpus import words
    from interp.zoo.evaluate import evaluate
    from interp.zoo.train import set_determinism, train

    recipe = RECIPES[name]
    log = _log(name)
    final = folder_of(name) if root is None else Path(root) / folder_of(name).name
    work = final.with_name(final.name + ".new")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    set_determinism(recipe.train.seed)
    if recipe.parent is None:
        tok = build_word_tokenizer(words(), save_to=work, model_max_length=recipe.model["n_ctx"])
        model = AutoModelForCausalLM.from_config(model_config(recipe.arch, tok, **recipe.model))
        parent_info = None
    else:
        parent = folder_of(recipe.parent) if root is None else Path(root) / folder_of(recipe.parent).name
        tok = AutoTokenizer.from_pretrained(str(parent))
        tok.save_pretrained(str(work))
        model = AutoModelForCausalLM.from_pretrained(str(parent), dtype=torch.float32)
        parent_info = {"name": recipe.parent, "weights_sha256": _sha(parent / "model.safetensors")}
    if recipe.trainable:
        for pname, p in model.named_parameters():
            p.requires_grad_(any(s in pname for s in recipe.trainable))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_train == 0:
        raise BuildError(f"{name}: no parameter name contains any of trainable={recipe.trainable}")
    phases = recipe.phases()
    log(
        f"training {n_train:,} of {sum(p.numel() for p in model.parameters()):,} parameters, "
        + " then ".join(f"{ph.train.steps} steps ({ph.name})" for ph in phases)
    )

    from interp.zoo.evaluate import check_parts

    targets = [t.metric for t in recipe.targets] if recipe.parent else []  # fine-tunes: track their targets
    parts = tuple(dict.fromkeys([*QUICK, *recipe.quick, *check_parts(targets)]))

    def quick(m) -> dict[str, float]:
        return evaluate(m, tok, parts)

    history: list[dict] = []
    for ph in phases:  # a curriculum: each phase its mixture and schedule; the history says which phase
        part = train(model, tok, ph.mixture, ph.train, evaluate=quick, log=_log(f"{name}:{ph.name}"))
        history += [{"phase": ph.name, **h} for h in part] if recipe.curriculum else part
    train_s = time.time() - t0
    scores = evaluate(model, tok)
    check = quick_check(model, tok, [t.metric for t in recipe.targets])
    model.save_pretrained(str(work))
    checks = check_targets(recipe, scores, root)
    card = {
        "name": name,
        "purpose": recipe.purpose,
        "architecture": model.config.architectures[0],
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_trained_params": n_train,
        "size_bytes": (work / "model.safetensors").stat().st_size,
        "vocab_size": len(tok),
        "parent": parent_info,
        "seed": recipe.train.seed,
        "recipe": recipe.to_dict(),
        "scores": scores,
        "targets": checks,
        "check": check,
        "build_time_s": round(time.time() - t0, 1),
        "train_time_s": round(train_s, 1),
        "history": history,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "threads": 1,
        },
    }
    return _finish(name, work, final, card, log)


def _finish(name: str, work: Path, final: Path, card: dict, log) -> dict:
    """Write the card; replace the committed folder if every target passed, else keep `<final>.failed` and raise."""
    (work / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    for c in card["targets"]:
        log(c["check"])
    missed = [c["check"] for c in card["targets"] if not c["passed"]]
    if missed:
        failed = final.with_name(final.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        work.rename(failed)
        raise BuildError(
            f"{name} missed {len(missed)} target(s) (attempt kept in {failed}):\n  " + "\n  ".join(missed)
        )
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    log(f"built in {card['build_time_s']:.0f}s -> {final}")
    return card


def build_sae_named(name: str, *, root: Path | None = None) -> dict:
    """Train, measure and save SAE `name` on its committed organism; return its card."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.zoo.sae import build_sae
    from interp.zoo.train import set_determinism

    entry = SAES[name]
    log = _log(name)
    final = folder_of(name) if root is None else Path(root) / folder_of(name).name
    org = (
        folder_of(entry.recipe.organism)
        if root is None
        else Path(root) / folder_of(entry.recipe.organism).name
    )
    work = final.with_name(final.name + ".new")
    shutil.rmtree(work, ignore_errors=True)
    set_determinism(entry.recipe.seed)
    tok = AutoTokenizer.from_pretrained(str(org))
    model = AutoModelForCausalLM.from_pretrained(str(org), dtype=torch.float32).eval()
    sae, card = build_sae(entry.recipe, model, tok, RECIPES[entry.recipe.organism].mixture, log=log)
    sae.save_model(work)
    card["organism_weights_sha256"] = _sha(org / "model.safetensors")
    card["size_bytes"] = sum(f.stat().st_size for f in work.iterdir())
    card["targets"] = [
        {**t.to_dict(), "passed": ok, "check": text}
        for t in entry.targets
        for ok, text in [t.check(card["scores"])]
    ]
    return _finish(name, work, final, card, log)


def build_one(name: str, *, root: Path | None = None) -> dict:
    """Build organism or SAE `name` in this process."""
    if name in SAES:
        return build_sae_named(name, root=root)
    if name in RECIPES:
        return build_organism(name, root=root)
    raise KeyError(f"no recipe for {name!r}; valid: {', '.join([*RECIPES, *SAES])}")
