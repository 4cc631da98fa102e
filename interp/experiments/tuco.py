"""Experiment `tuco` (Nuti et al. 2025, "Measuring the Contribution of Fine-Tuning to Individual Responses of
LLMs"): TuCo of a chat fine-tune against its base on held-out chat requests and on pre-training text of matched
lengths (the paper's HH-RLHF vs OpenWebText AUC), on forbidden vs allowed requests, and the refusal rate of the
FTC alpha-scaled model's greedy replies to forbidden requests for each alpha.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.config import check_fields, each, in_range, model_name, non_empty, one_of, param, positive
from interp.experiments.api import Run, register_experiment
from interp.finetuning.tuco import generate_scaled, tuco, tuco_scores
from interp.metrics import auroc
from interp.models.base import HookedModel
from interp.models.load import BACKENDS, DTYPES

ALPHAS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5)


def _load(name: str, backend: str, device: str, dtype: str = "float32") -> HookedModel:
    from interp.models.load import load_model

    return load_model(name, backend=backend, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ tuco
@dataclass(frozen=True, kw_only=True)
class TuCoExperimentConfig:
    """Parameters of `tuco` (defaults: the zoo organisms on CPU)."""

    base: str = param("organism/base", check=model_name)  # the pre-trained model
    # its chat fine-tune (refuses requests about weapons)
    finetuned: str = param("organism/chat-ft", check=model_name)
    backend: str = param("tl", check=one_of(BACKENDS))
    dtype: str = param(
        "float32", check=one_of(DTYPES)
    )  # both models' weights (bfloat16 for 7B models on a GPU)
    n_chat: int = param(200, check=positive)  # held-out chat requests (half about the forbidden topic)
    n_pretrain: int = param(
        200, check=positive
    )  # pre-training-mixture texts, cut to the chat prompts' lengths
    n_generate: int = param(64, check=positive)  # forbidden (and as many allowed) requests at each alpha
    alphas: tuple[float, ...] = param(ALPHAS, check=(non_empty, each(in_range(0, 10))))  # FTC scales
    max_new_tokens: int = param(4, check=positive)  # a reply counts as a refusal when it has a refusal word
    n_layer_profile: int = param(32, check=positive)  # prompts per kind for the per-layer TuCo profile
    batch_size: int = param(64, check=positive)

    def __post_init__(self) -> None:
        check_fields(self, where="tuco")


def _refusal_ids(tokenizer: Any) -> list[int]:
    """The token ids of the refusal words as they start a reply (after a space; SentencePiece tokenizers that
    add a bare `▁` of their own are read in context), raising when a word is not one token."""
    from interp.tasks import chat
    from interp.tasks.encode import word_token

    ids = {w: word_token(tokenizer, w) for w in chat.REFUSAL_WORDS}
    split = [w for w, i in ids.items() if i is None]
    if split:
        raise ValueError(
            f"the refusal word(s) {split} are not single tokens of this tokenizer: a reply's refusal could "
            "not be read from its tokens"
        )
    return [i for i in ids.values() if i is not None]


DEMO = {"n_chat": 32, "n_pretrain": 32, "n_generate": 8, "alphas": [0.0, 1.0], "n_layer_profile": 8}


@register_experiment("tuco", config=TuCoExperimentConfig, demo=DEMO)
def tuco_experiment(cfg: TuCoExperimentConfig, run: Run) -> dict[str, Any]:
    """TuCo of a chat fine-tune: chat vs pre-training text, forbidden vs allowed, refusals under FTC scaling."""
    from interp import tasks
    from interp.plotting import histogram, line
    from interp.zoo.pretrain import pretrain_tokens

    base = _load(cfg.base, cfg.backend, run.device, cfg.dtype)
    ft = _load(cfg.finetuned, cfg.backend, run.device, cfg.dtype)
    tok = ft.tokenizer
    refuse = torch.tensor(_refusal_ids(tok))
    # held-out chat requests: each forbidden request with the same request about an allowed topic
    chat_ps = tasks.make("chat", tok, n=cfg.n_chat, seed=run.seed + 1)
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
