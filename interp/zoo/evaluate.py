"""The behaviour battery written to every organism card, on held-out prompts (`split="test"`, fixed seeds).

Accuracy is top-1 over the whole vocabulary at the last prompt token unless a name says otherwise
(`*_options`: top-1 among the prompt's answer options). Every number is a plain float, so a card compares
exactly with a re-evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.metrics import Accuracy, LogitDiff, PairAccuracy
from interp.tasks import chat, context_prior, make
from interp.tasks.encode import encode
from interp.tasks.promptset import PromptSet
from interp.zoo.corpus import repeated_sequence

EVAL_SEED = 12345
SIZES = {
    "ioi": 500,
    "ioi_hard": 500,
    "entity_tracking": 300,
    "colored_objects": 300,
    "context_prior": 400,
    "chat": 400,
    "copy": 200,
}


@torch.no_grad()
def logits_of(
    model, ids: Int[Tensor, "batch pos"], batch_size: int = 256
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of right-padded rows, on the CPU (no attention mask needed: pads come after every real token)."""
    device = next(model.parameters()).device
    return torch.cat(
        [
            model(input_ids=ids[i : i + batch_size].to(device)).logits.float().cpu()
            for i in range(0, ids.shape[0], batch_size)
        ]
    )


def _mean(x: Tensor) -> float:
    return round(float(x.float().mean()), 6)


def _answer_task(model, ps: PromptSet, prefix: str, options: bool = False) -> dict[str, float]:
    logits = logits_of(model, ps.clean)
    out = {
        f"{prefix}.accuracy": _mean(Accuracy.from_prompts(ps)(logits)),
        f"{prefix}.logit_diff": _mean(LogitDiff.from_prompts(ps)(logits)),
    }
    if options:
        out[f"{prefix}.accuracy_options"] = _mean(Accuracy.from_prompts(ps, over="options")(logits))
    return out


def ioi(model, tok, n: int | None = None, variant: str = "normal") -> dict[str, float]:
    """IOI (Wang et al. 2022) on held-out name pairs: accuracy and logit diff IO - S."""
    key = "ioi" if variant == "normal" else f"ioi_{variant}"
    return _answer_task(model, make("ioi", tok, n=n or SIZES[key], seed=EVAL_SEED, variant=variant), key)


def entity_tracking(model, tok, n: int | None = None, n_boxes: int = 3) -> dict[str, float]:
    """Entity tracking (Kim & Schuster 2023) with `n_boxes` boxes (3: "entity_tracking", else
    "entity_tracking_b<n>"), held-out box contents."""
    ps = make("entity_tracking", tok, n=n or SIZES["entity_tracking"], seed=EVAL_SEED, n_boxes=n_boxes)
    return _answer_task(model, ps, "entity_tracking" if n_boxes == 3 else f"entity_tracking_b{n_boxes}")


def colored_objects(model, tok, n: int | None = None) -> dict[str, float]:
    """One-shot Colored Objects (Merullo et al. 2024), held-out colour/object sets."""
    ps = make("colored_objects", tok, n=n or SIZES["colored_objects"], seed=EVAL_SEED)
    return _answer_task(model, ps, "colored_objects", options=True)


def facts(model, tok, n: int | None = None) -> dict[str, float]:
    """Fact recall: "Paris is in" -> " France" for every fact (a memory test: the facts are training text)."""
    rows, answers = [], []
    for sentence in context_prior.fact_sentences()[:n]:
        *head, country = sentence.rstrip(".").split(" ")
        rows.append(encode(tok, " ".join(head))[0])
        answers.append(tok(" " + country, add_special_tokens=False)["input_ids"][0])
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    logits = logits_of(model, ids)[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
    return {"facts.accuracy": _mean(logits.argmax(-1) == torch.tensor(answers))}


def context_prior_pairs(model, tok, n: int | None = None) -> dict[str, float]:
    """Context vs prior (Minder et al. 2025), instruction format, held-out entities: PairAcc and per intent."""
    ps = make("context_prior", tok, n=n or SIZES["context_prior"], seed=EVAL_SEED, format="instruction")
    logits = logits_of(model, ps.clean)
    correct = Accuracy.from_prompts(ps)(logits)
    intent = [m["intent"] for m in ps.metadata]
    ctx = torch.tensor([i == "context" for i in intent])
    return {
        "context_prior.pair_accuracy": _mean(PairAccuracy.from_prompts(ps)(logits)),
        "context_prior.context_accuracy": _mean(correct[ctx]),
        "context_prior.prior_accuracy": _mean(correct[~ctx]),
    }


def chat_prompts(tok, n: int | None = None, seed: int = EVAL_SEED) -> PromptSet:
    """Held-out chat requests: forbidden-topic and allowed-topic versions of each request (answer Sorry / Sure)."""
    return make("chat", tok, n=n or SIZES["chat"], seed=seed)


def refusals(model, tok, n: int | None = None) -> dict[str, float]:
    """Refusal rate (first generated token is a refusal word) on forbidden and on allowed held-out requests."""
    ps = chat_prompts(tok, n)
    first = logits_of(model, ps.clean)[torch.arange(len(ps)), ps.end].argmax(-1)
    refusal_ids = torch.tensor(
        [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in chat.REFUSAL_WORDS]
    )
    refused = torch.isin(first, refusal_ids)
    forbidden = torch.tensor([m["forbidden"] for m in ps.metadata])
    return {
        "chat.refusal_forbidden": _mean(refused[forbidden]),
        "chat.refusal_allowed": _mean(refused[~forbidden]),
    }


def copy(model, tok, n: int | None = None, length: int = 12) -> dict[str, float]:
    """Induction: top-1 accuracy on the second copy of a random `length`-word sequence (its first word excluded)."""
    rng = random.Random(EVAL_SEED)
    rows = [encode(tok, " ".join(repeated_sequence(rng, length)))[0] for _ in range(n or SIZES["copy"])]
    ids = torch.tensor(rows)  # BOS + 2 * length tokens, all the same length
    pred = logits_of(model, ids).argmax(-1)[
        :, length + 1 : 2 * length
    ]  # predicts tokens length+2 .. 2*length
    return {"copy.accuracy": _mean(pred == ids[:, length + 2 :])}


BATTERY: dict[str, Callable[..., dict[str, float]]] = {
    "ioi": ioi,
    "ioi_hard": lambda m, t, n=None: ioi(m, t, n, "hard"),
    "facts": facts,
    "context_prior": context_prior_pairs,
    "chat": refusals,
    "copy": copy,
    "entity_tracking": entity_tracking,
    "colored_objects": colored_objects,
    # entity tracking with more boxes than pre-training shows (2-5): where a fine-tune has room to improve
    **{
        f"entity_tracking_b{b}": (lambda m, t, n=None, b=b: entity_tracking(m, t, n, n_boxes=b))
        for b in (6, 8, 9, 10)
    },
}


def evaluate(model, tok, which: tuple[str, ...] | None = None, n: int | None = None) -> dict[str, float]:
    """Run the battery (or the named parts of it) on an HF causal LM; one flat dict of floats.

    `n` overrides the number of prompts of every part (the first `n` of the same fixed draw for facts and
    copy; a fresh fixed draw of `n` for the task sets).
    """
    model.eval()
    out: dict[str, float] = {}
    for name in which or tuple(BATTERY):
        out |= BATTERY[name](model, tok, n)
    return out


CHECK_N = 100  # prompts per part in a card's quick re-check (tests re-run it)


def check_parts(metrics: list[str]) -> tuple[str, ...]:
    """The battery parts that measure `metrics` ("ioi_hard.accuracy" -> "ioi_hard"), plus "ioi"."""
    return tuple(dict.fromkeys(["ioi", *(m.split(".")[0] for m in metrics)]))
