"""Experiments `tuco` (Nuti et al. 2025) and `finetune_cmap` (Prakash et al. 2024) on the zoo organisms, plus the
`finetuning` demo step (a CMAP table and a TuCo histogram).

`tuco`: TuCo of organism/chat-ft against organism/base on held-out chat requests and on pre-training text of
matched lengths (the paper's HH-RLHF vs OpenWebText AUC), on forbidden vs allowed requests, and the refusal rate
of the FTC alpha-scaled model's greedy replies to forbidden requests for alpha in {0, 0.5, 0.75, 1, 1.25, 1.5}.

`finetune_cmap`: the base model's IOI circuit, found by staged path patching on the IOI variant the base model
solves (name movers -> logits, S-inhibition -> name-mover queries, duplicate/induction -> S-inhibition values at
S2); on the hard variant that organism/ioi-ft was fine-tuned on: its faithfulness in the base model and inside
the fine-tune (complement mean-ablated over the ABC prompts), and output/input CMAP of each head group from the
fine-tune into the base model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.demo import register_demo_step
from interp.finetuning.cmap import (
    HeadGroup,
    cmap_input,
    cmap_output,
    cmap_sweep,
    evaluate_circuit,
    random_circuit,
)
from interp.finetuning.tuco import generate_scaled, tuco, tuco_scores
from interp.metrics import auroc
from interp.models.base import HookedModel
from interp.runner import Run, register_experiment

ALPHAS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5)


def _load(name: str, backend: str, device: str) -> HookedModel:
    from interp.models.load import load_model

    return load_model(name, backend=backend, device=device)


# ------------------------------------------------------------------------------------------------ tuco
@dataclass(frozen=True, kw_only=True)
class TuCoExperimentConfig:
    """Parameters of `tuco` (defaults: the zoo organisms on CPU)."""

    base: str = "organism/base"  # the pre-trained model
    finetuned: str = "organism/chat-ft"  # its chat fine-tune (refuses requests about weapons)
    backend: str = "tl"
    n_chat: int = 200  # held-out chat requests (half about the forbidden topic)
    n_pretrain: int = 200  # pre-training-mixture texts, cut to the chat prompts' lengths
    n_generate: int = 64  # forbidden (and as many allowed) requests answered at each alpha
    alphas: tuple[float, ...] = ALPHAS
    max_new_tokens: int = 4  # a reply counts as a refusal when it contains a refusal word
    n_layer_profile: int = 32  # prompts per kind for the per-layer (cumulative) TuCo profile
    batch_size: int = 64


def chat_prompt_set(tokenizer: Any, n: int, seed: int):
    """Held-out chat requests: each forbidden request with the same request about an allowed topic."""
    from interp import tasks

    return tasks.make("chat", tokenizer, n=n, seed=seed)


def pretrain_tokens(tokenizer: Any, lengths: list[int], seed: int) -> tuple[Tensor, Tensor]:
    """Pre-training-mixture documents (all sources but chat), each cut to the next of `lengths` tokens
    (BOS included): the organisms' analogue of the paper's OpenWebText substrings. Right-padded ids and mask."""
    from interp.tasks.encode import encode
    from interp.zoo.corpus import BASE_MIX, Mixture

    mix = Mixture({k: v for k, v in BASE_MIX.items() if k != "chat"})
    rng = random.Random(seed)
    rows: list[list[int]] = []
    for n in lengths:
        ids: list[int] = []
        while len(ids) < n:  # concatenate documents until long enough
            ex = mix.sample(rng)
            more = encode(tokenizer, f"{ex.prompt} {ex.completion}".strip())[0]
            ids = more if not ids else ids + more[1:]
        rows.append(ids[:n])
    width = max(lengths)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(out)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return out, mask


def refusal_ids(tokenizer: Any) -> list[int]:
    from interp.tasks import chat

    return [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in chat.REFUSAL_WORDS]


@register_experiment("tuco", config=TuCoExperimentConfig)
def tuco_experiment(cfg: TuCoExperimentConfig, run: Run) -> dict[str, Any]:
    """TuCo of a chat fine-tune: chat vs pre-training text, forbidden vs allowed, refusals under FTC scaling."""
    from interp.plotting import histogram, line

    base, ft = _load(cfg.base, cfg.backend, run.device), _load(cfg.finetuned, cfg.backend, run.device)
    tok = ft.tokenizer
    chat_ps = chat_prompt_set(tok, cfg.n_chat, seed=run.seed + 1)
    forbidden = torch.tensor([bool(m["forbidden"]) for m in chat_ps.metadata])
    lengths = chat_ps.lengths.tolist()
    rng = random.Random(run.seed + 2)
    pre_ids, pre_mask = pretrain_tokens(
        tok, [rng.choice(lengths) for _ in range(cfg.n_pretrain)], run.seed + 3
    )

    def scores() -> dict[str, Tensor]:
        return {
            "chat": tuco_scores(ft, base, chat_ps, batch_size=cfg.batch_size),
            "pretrain": tuco_scores(ft, base, pre_ids, attention_mask=pre_mask, batch_size=cfg.batch_size),
        }

    s = run.step("scores", scores)
    chat_s, pre_s = s["chat"], s["pretrain"]

    def profile() -> dict[str, Tensor]:
        k = cfg.n_layer_profile
        a = tuco(ft, base, chat_ps.clean[:k], attention_mask=chat_ps.attention_mask[:k]).cumulative().mean(-1)
        b = tuco(ft, base, pre_ids[:k], attention_mask=pre_mask[:k]).cumulative().mean(-1)
        return {"chat": a, "pretrain": b}

    prof = run.step("layer_profile", profile)
    idx = {
        "forbidden": forbidden.nonzero().squeeze(-1)[: cfg.n_generate],
        "allowed": (~forbidden).nonzero().squeeze(-1)[: cfg.n_generate],
    }
    refuse = torch.tensor(refusal_ids(tok))

    def refusals() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"forbidden": [], "allowed": []}
        for alpha in cfg.alphas:
            for kind, rows in idx.items():
                gen = generate_scaled(
                    ft,
                    base,
                    chat_ps.clean[rows],
                    alpha,
                    cfg.max_new_tokens,
                    attention_mask=chat_ps.attention_mask[rows],
                )
                out[kind].append(float(torch.isin(gen.cpu(), refuse).any(-1).float().mean()))
        return out

    rates = run.step("refusals", refusals)
    run.table(
        {"prompt": chat_ps.prompts, "forbidden": forbidden.tolist(), "tuco": chat_s.tolist()}, "chat_tuco"
    )
    run.table(
        {
            "alpha": list(cfg.alphas),
            "refusal_forbidden": rates["forbidden"],
            "refusal_allowed": rates["allowed"],
        },
        "refusal_by_alpha",
    )
    run.figure(
        histogram(
            {"chat requests": chat_s, "pre-training text": pre_s},
            x_title="TuCo",
            title="TuCo of chat-ft: chat vs pre-training text",
            bins=30,
        ),
        "tuco_chat_vs_pretrain",
    )
    run.figure(
        histogram(
            {"forbidden topic": chat_s[forbidden], "allowed topic": chat_s[~forbidden]},
            x_title="TuCo",
            title="TuCo of chat-ft: forbidden vs allowed requests",
            bins=30,
        ),
        "tuco_forbidden_vs_allowed",
    )
    run.figure(
        line(
            {"forbidden requests": rates["forbidden"], "allowed requests": rates["allowed"]},
            x=list(cfg.alphas),
            x_title="alpha (FTC scale)",
            y_title="refusal rate",
            title="Refusals of the FTC alpha-scaled chat-ft",
        ),
        "refusal_by_alpha",
    )
    run.figure(
        line(
            {"chat requests": prof["chat"], "pre-training text": prof["pretrain"]},
            x=list(range(ft.cfg.n_layers)),
            x_title="layer",
            y_title="TuCo of components up to layer",
            title="Cumulative TuCo by layer (mean over prompts)",
        ),
        "tuco_by_layer",
    )
    results: dict[str, Any] = {
        "auc_chat_vs_pretrain": auroc(pre_s, chat_s),
        "auc_forbidden_vs_allowed": auroc(chat_s[~forbidden], chat_s[forbidden]),
        "tuco_chat_mean": float(chat_s.mean()),
        "tuco_pretrain_mean": float(pre_s.mean()),
        "tuco_forbidden_mean": float(chat_s[forbidden].mean()),
        "tuco_allowed_mean": float(chat_s[~forbidden].mean()),
    }
    # alpha -> refusal rate, as objects keyed by the alpha's shortest decimal form ("0.5", "1")
    results["refusal_rate_by_alpha"] = {
        f"{a:g}": r for a, r in zip(cfg.alphas, rates["forbidden"], strict=True)
    }
    results["allowed_refusal_rate_by_alpha"] = {
        f"{a:g}": r for a, r in zip(cfg.alphas, rates["allowed"], strict=True)
    }
    return results


# ------------------------------------------------------------------------------------------------ finetune_cmap
@dataclass(frozen=True, kw_only=True)
class FinetuneCMAPConfig:
    """Parameters of `finetune_cmap` (defaults: the zoo organisms on CPU)."""

    base: str = "organism/base"  # where the circuit is found
    finetuned: str = "organism/ioi-ft"  # fine-tuned on hard IOI
    backend: str = "tl"
    circuit_variant: str = (
        "normal"  # IOI variant the circuit is found on (where the base model does the task)
    )
    variant: str = "hard"  # IOI variant the fine-tune improves: accuracies, circuit evaluation and CMAP
    metric: str = (
        "io_vs_s"  # "io_vs_s": IO's logit above S's (chance 0.5); "top1": IO top-1 over the vocabulary
    )
    n_prompts: int = 200  # held-out prompts per variant (one token length, for path patching)
    group_sizes: tuple[int, int, int] = (3, 2, 2)  # name movers, S-inhibition, duplicate/induction heads
    n_random: int = 5  # random circuits of the same group sizes (baseline)


def ioi_accuracy(prompts: Any, kind: str):
    """Top-1 accuracy over the vocabulary ("top1") or between the two names ("io_vs_s")."""
    from interp.metrics import Accuracy

    if kind == "top1":
        return Accuracy.from_prompts(prompts)
    if kind == "io_vs_s":
        return Accuracy(
            positions=prompts.end,
            target=torch.zeros(len(prompts), dtype=torch.long),
            token_ids=torch.stack([prompts.answer_ids, prompts.wrong_ids], 1),
        )
    raise ValueError(f"metric must be 'io_vs_s' or 'top1'; got {kind!r}")


def ioi_prompts(tokenizer: Any, n: int, seed: int, variant: str):
    from interp.tasks import make

    return make("ioi", tokenizer, n=n, seed=seed, variant=variant, same_length=True)


def find_ioi_groups(
    model: HookedModel, prompts: Any, sizes: tuple[int, int, int]
) -> tuple[list[HeadGroup], dict]:
    """The IOI circuit's head groups by staged path patching (Wang et al. 2022; Prakash et al.'s procedure):
    name movers (direct effect at END), S-inhibition (END, through the name movers' queries), duplicate/induction
    heads (S2, through the S-inhibition heads' values). Returns the groups and each stage's score grid."""
    from interp.metrics import LogitDiff
    from interp.patching.path import path_patch
    from interp.sites import Site

    metric = LogitDiff.from_prompts(prompts)
    H = model.cfg.n_heads
    chosen: set[tuple[int, int]] = set()
    groups: list[HeadGroup] = []
    grids: dict[str, Tensor] = {}

    def pick(res: Any, k: int) -> list[tuple[int, int]]:
        ranked = [s for s in res.top(len(res.senders)) if s not in chosen]
        return sorted(ranked[:k])

    nm_res = path_patch(model, clean=prompts, metric=metric, receivers="logits", sender_pos="END")
    grids["name_movers"] = nm_res.scores
    nm = pick(nm_res, sizes[0])
    chosen |= set(nm)
    groups.append(HeadGroup(name="name movers", heads=tuple(nm), position="END"))
    for name, key, comp, pos, k in (
        ("S-inhibition", "s_inhibition", "q", "END", sizes[1]),
        ("induction", "induction", "v", "S2", sizes[2]),
    ):
        receivers = groups[-1].heads
        top_layer = max(layer for layer, _ in receivers)
        senders = [(layer, h) for layer in range(top_layer) for h in range(H) if (layer, h) not in chosen]
        if not senders or k == 0:
            continue
        res = path_patch(
            model,
            clean=prompts,
            metric=metric,
            senders=senders,
            sender_pos=pos,
            receivers=[Site(comp, layer, head=h) for layer, h in receivers],
            receiver_pos=groups[-1].position,
        )
        grids[key] = res.scores
        heads = pick(res, k)
        chosen |= set(heads)
        groups.append(HeadGroup(name=name, heads=tuple(heads), position=pos))
    return groups, grids


@register_experiment("finetune_cmap", config=FinetuneCMAPConfig)
def finetune_cmap_experiment(cfg: FinetuneCMAPConfig, run: Run) -> dict[str, Any]:
    """The base model's IOI circuit inside its fine-tune, and which head group's fine-tuned outputs carry the gain."""
    from interp.metrics import LogitDiff
    from interp.plotting import bar, heatmap

    base, ft = _load(cfg.base, cfg.backend, run.device), _load(cfg.finetuned, cfg.backend, run.device)
    ps = ioi_prompts(base.tokenizer, cfg.n_prompts, run.seed + 7, cfg.variant)
    found_on = ioi_prompts(base.tokenizer, cfg.n_prompts, run.seed + 8, cfg.circuit_variant)
    reference = replace(ps, clean=ps.corrupt)  # mean ablation over the ABC prompts (Wang et al.)
    acc, top1 = ioi_accuracy(ps, cfg.metric), ioi_accuracy(ps, "top1")
    acc_found_on = ioi_accuracy(found_on, cfg.metric)

    def accuracies() -> dict[str, float]:
        with torch.no_grad():
            lb, lf = base(ps.clean), ft(ps.clean)
            return {
                "base": float(acc(lb).mean()),
                "ft": float(acc(lf).mean()),
                "base_top1": float(top1(lb).mean()),
                "ft_top1": float(top1(lf).mean()),
                "base_circuit_task": float(acc_found_on(base(found_on.clean)).mean()),
            }

    accs = run.step("accuracy", accuracies)

    def circuit() -> dict[str, Any]:
        groups, grids = find_ioi_groups(base, found_on, cfg.group_sizes)
        return {
            "groups": [
                {"name": g.name, "heads": [list(h) for h in g.heads], "position": g.position} for g in groups
            ],
            "grids": {k: v.tolist() for k, v in grids.items()},
        }

    found = run.step("circuit", circuit)
    groups = [
        HeadGroup(name=g["name"], heads=tuple(tuple(h) for h in g["heads"]), position=g["position"])
        for g in found["groups"]
    ]
    L, H = base.cfg.n_layers, base.cfg.n_heads
    randoms = {
        f"random {i}": random_circuit(groups, n_layers=L, n_heads=H, seed=run.seed + i)
        for i in range(cfg.n_random)
    }

    def evaluation() -> dict[str, Any]:
        in_base = evaluate_circuit(
            base, ps, {"base circuit": groups, **randoms}, metric=acc, reference=reference
        )
        in_ft = evaluate_circuit(ft, ps, {"base circuit": groups}, metric=acc, reference=reference)
        on_task = evaluate_circuit(
            base,
            found_on,
            {"base circuit": groups, **randoms},
            metric=acc_found_on,
            reference=replace(found_on, clean=found_on.corrupt),
        )
        out = cmap_output(base, ft, ps, groups, metric=acc)
        out_ld = cmap_output(base, ft, ps, groups, metric=LogitDiff)
        inp = cmap_input(base, ft, ps, groups, metric=acc)
        sweep = {
            c: cmap_sweep(base, ft, ps, component=c, metric=LogitDiff).scores.tolist()
            for c in ("attn_out", "mlp_out")
        }
        return {
            "in_base": in_base.scores(),
            "in_ft": in_ft.scores(),
            "on_task": on_task.scores(),
            "cmap_out": out.scores(),
            "cmap_out_logit_diff": out_ld.scores(),
            "cmap_in": inp.scores(),
            "sweep": sweep,
            "ld": {"base": float(out_ld.receiver.mean()), "ft": float(out_ld.sender.mean())},
        }

    ev = run.step("evaluation", evaluation)
    random_acc = sum(ev["in_base"][k] for k in randoms) / max(1, len(randoms))
    faith = ev["in_base"]["base circuit"] / accs["base"] if accs["base"] else float("nan")
    per_group = {k: v for k, v in ev["cmap_out"].items() if k != "all groups"}
    best = max(per_group, key=lambda k: per_group[k])
    rows = [
        {
            "heads patched": name,
            "accuracy (base <- ft)": ev["cmap_out"][name],
            "logit diff (base <- ft)": ev["cmap_out_logit_diff"][name],
            "input CMAP accuracy": ev["cmap_in"].get(name, float("nan")),
            "heads": "; ".join(f"{a}.{b}" for a, b in g.heads) if (g := _group(groups, name)) else "all",
        }
        for name in ev["cmap_out"]
    ]
    run.table(rows, "cmap")
    run.table(found["groups"], "circuit")
    names = ["base (unpatched)", *ev["cmap_out"], "ft (unpatched)"]
    run.figure(
        bar(
            [accs["base"], *ev["cmap_out"].values(), accs["ft"]],
            labels=names,
            x_title="heads patched",
            y_title="accuracy",
            title="Output CMAP: fine-tuned head outputs patched into the base model",
        ),
        "cmap_output",
    )
    for key, grid in found["grids"].items():
        run.figure(
            heatmap(
                torch.nan_to_num(torch.tensor(grid)).numpy(),
                x_labels=[str(h) for h in range(H)],
                y_labels=[str(i) for i in range(L)],
                x_title="head",
                y_title="layer",
                title=f"Path patching: {key.replace('_', ' ')} stage",
            ),
            f"path_patching_{key}",
        )
    tokens = base.to_str_tokens(ps.clean[0])
    for comp, grid in ev["sweep"].items():
        run.figure(
            heatmap(
                torch.tensor(grid).numpy(),
                x_labels=[f"{i}:{t}" for i, t in enumerate(tokens)],
                y_labels=[str(i) for i in range(L)],
                x_title="position",
                y_title="layer",
                title=f"Component CMAP ({comp}, ft -> base): logit difference",
            ),
            f"cmap_sweep_{comp}",
        )
    faith_task = (
        ev["on_task"]["base circuit"] / accs["base_circuit_task"] if accs["base_circuit_task"] else None
    )
    random_task = sum(ev["on_task"][k] for k in randoms) / max(1, len(randoms))
    return {
        "base_acc": accs["base"],
        "ft_acc": accs["ft"],
        "base_circuit_faithfulness": faith,
        "base_top1_acc": accs["base_top1"],
        "ft_top1_acc": accs["ft_top1"],
        f"base_acc_{cfg.circuit_variant}": accs["base_circuit_task"],
        f"base_circuit_faithfulness_{cfg.circuit_variant}": faith_task,
        f"random_circuit_acc_{cfg.circuit_variant}": random_task,
        "base_circuit_acc": ev["in_base"]["base circuit"],
        "random_circuit_acc": random_acc,
        "base_circuit_acc_in_ft": ev["in_ft"]["base circuit"],
        "cmap_best_group": best,
        "cmap_base_acc_after": per_group[best],
        "cmap_all_groups_acc": ev["cmap_out"].get("all groups", per_group[best]),
        "base_logit_diff": ev["ld"]["base"],
        "ft_logit_diff": ev["ld"]["ft"],
        "circuit_heads": "; ".join(f"{g.name}: " + " ".join(f"{a}.{b}" for a, b in g.heads) for g in groups),
    }


def _group(groups: list[HeadGroup], name: str) -> HeadGroup | None:
    return next((g for g in groups if g.name == name), None)


# ------------------------------------------------------------------------------------------------ demo step
def _available(*names: str) -> list[str]:
    from interp.models.load import ModelLoadError, resolve

    missing = []
    for n in names:
        try:
            resolve(n)
        except (ModelLoadError, FileNotFoundError, KeyError, ValueError):
            missing.append(n)
    return missing


@register_demo_step("finetuning", order=50)
def finetuning_demo(out: Path) -> None:
    """What fine-tuning changed: CMAP of organism/ioi-ft into organism/base; TuCo of organism/chat-ft."""
    from rich.console import Console
    from rich.table import Table

    from interp.plotting import histogram, save_figure

    missing = _available("organism/base", "organism/ioi-ft", "organism/chat-ft")
    if missing:
        print(
            f"The fine-tuning demo needs the organisms {', '.join(missing)}: build them with `interp zoo build`."
        )
        return
    base, ioi_ft, chat_ft = (
        _load(n, "tl", "cpu") for n in ("organism/base", "organism/ioi-ft", "organism/chat-ft")
    )
    groups, _ = find_ioi_groups(base, ioi_prompts(base.tokenizer, 64, 8, "normal"), (3, 2, 2))
    ps = ioi_prompts(base.tokenizer, 64, 7, "hard")
    res = cmap_output(base, ioi_ft, ps, groups, metric=ioi_accuracy(ps, "io_vs_s"))
    frame = res.to_frame()
    frame["heads"] = [
        " ".join(f"{a}.{b}" for a, b in g.heads) if (g := _group(groups, n)) else "all"
        for n in frame["group"]
    ]
    frame.to_csv(out / "cmap.csv", index=False)
    save_figure(
        res.figure(title="Output CMAP (hard IOI, IO vs S accuracy): ioi-ft head outputs -> base"),
        out / "cmap",
    )
    table = Table(
        title="Output CMAP, hard IOI: IO-vs-S accuracy of organism/base with one head group from "
        "organism/ioi-ft"
    )
    for col in ("group", "heads", "value", "gap_closed"):
        table.add_column(col)
    for _, r in frame.iterrows():
        table.add_row(r["group"], r["heads"], f"{r['value']:.3f}", f"{r['gap_closed']:.2f}")
    Console().print(table)
    print(f"unpatched: base {float(res.receiver.mean()):.3f}, ioi-ft {float(res.sender.mean()):.3f}")
    chat = chat_prompt_set(chat_ft.tokenizer, 64, seed=1)
    forbidden = torch.tensor([bool(m["forbidden"]) for m in chat.metadata])
    scores = tuco_scores(chat_ft, base, chat)
    pre_ids, pre_mask = pretrain_tokens(chat_ft.tokenizer, chat.lengths.tolist(), seed=2)
    pre = tuco_scores(chat_ft, base, pre_ids, attention_mask=pre_mask)
    save_figure(
        histogram(
            {
                "forbidden requests": scores[forbidden],
                "allowed requests": scores[~forbidden],
                "pre-training text": pre,
            },
            x_title="TuCo",
            bins=25,
            title="TuCo of organism/chat-ft against organism/base",
        ),
        out / "tuco_histogram",
    )
    print(
        f"TuCo (chat-ft vs base): forbidden {float(scores[forbidden].mean()):.3f}, allowed "
        f"{float(scores[~forbidden].mean()):.3f}, pre-training text {float(pre.mean()):.3f}; AUC chat vs "
        f"pre-training {auroc(pre, scores):.2f}"
    )
