"""IOI head classes from attention patterns (Wang et al. 2022, §3): each behaviour is a (query, key) position
pair, a head's evidence is its mean attention on that pair, against uniform attention."""

from __future__ import annotations

from typing import Any

import torch

from interp.circuits.graph import head_name
from interp.models.base import HookedModel
from interp.sites import Site

# where each IOI behaviour shows, as (query position, key position) of the attention pattern (Wang et al. §3);
# "s1_next_reader" is not one of Wang's classes: a head at END reading S1+1, where previous-token heads have
# written S1's neighbours (the organisms use it in place of name movers)
IOI_BEHAVIOURS: dict[str, tuple[str, str]] = {
    "mover": ("END", "IO"),  # copies the indirect object
    "s_inhibition": ("END", "S2"),  # attends to the repeated subject at the end
    "s1_next_reader": ("END", "S1+1"),  # reads the token after S1 at the end
    "induction": ("S2", "S1+1"),  # at S2, attends to the token after S1
    "duplicate_token": ("S2", "S1"),  # at S2, attends to the earlier copy of S
    "previous_token": ("S1+1", "S1"),  # attends to the previous token
}
# the behaviours possible where a head acts (its query position)
BEHAVIOURS_AT: dict[str, tuple[str, ...]] = {
    "END": ("mover", "s_inhibition", "s1_next_reader"),
    "S2": ("induction", "duplicate_token"),
    "S1+1": ("previous_token",),
}


def attention_evidence(
    model: HookedModel, prompts: Any, heads: list[tuple[int, int]]
) -> dict[str, dict[str, float]]:
    """Per head, the mean attention probability of each IOI behaviour's (query, key) position pair, and of the
    same pair under uniform attention (`uniform_<behaviour>`: 1 / (query position + 1))."""
    if not heads:
        return {}
    layers = sorted({layer for layer, _ in heads})
    with torch.no_grad():
        _, cache = model.run_with_cache(
            prompts.clean.to(model.device),
            [Site("pattern", layer) for layer in layers],
            attention_mask=prompts.attention_mask.to(model.device),
        )
    b = torch.arange(prompts.clean.shape[0])
    out = {}
    for layer, h in heads:
        p = cache[f"blocks.{layer}.attn.hook_pattern"][:, h].float().cpu()  # (B, query, key)
        ev = {
            name: float(p[b, prompts.position(q), prompts.position(k)].mean())
            for name, (q, k) in IOI_BEHAVIOURS.items()
        }
        ev |= {
            f"uniform_{name}": float((1.0 / (prompts.position(q).float() + 1)).mean())
            for name, (q, _) in IOI_BEHAVIOURS.items()
        }
        out[head_name(layer, h)] = ev
    return out


def classify(evidence: dict[str, float], position: str | None, *, min_ratio: float = 2.0) -> str:
    """The behaviour with the most attention among those possible where the head acts (all when unknown),
    if that attention is at least `min_ratio` times uniform attention; otherwise "diffuse"."""
    allowed = BEHAVIOURS_AT.get(position or "", tuple(IOI_BEHAVIOURS))
    best = max(allowed, key=lambda k: evidence[k] / evidence[f"uniform_{k}"])
    return best if evidence[best] >= min_ratio * evidence[f"uniform_{best}"] else "diffuse"


def behaviour_classes(
    evidence: dict[str, dict[str, float]], *, min_ratio: float = 2.0
) -> dict[str, list[str]]:
    """Every IOI behaviour -> the heads that show it (Wang et al.'s classes, by attention alone): at each query
    position a head may act at (END, S2, S1+1), its best behaviour there if at least `min_ratio` times uniform.
    A head can have several classes at different positions (e.g. induction at S2 and mover at END)."""
    out: dict[str, list[str]] = {name: [] for name in IOI_BEHAVIOURS}
    for head, ev in evidence.items():
        for position in BEHAVIOURS_AT:
            kind = classify(ev, position, min_ratio=min_ratio)
            if kind != "diffuse":
                out[kind].append(head)
    return out
