"""Path patching (Wang et al. 2022, App. B; Merullo et al. 2024; Prakash et al. 2024), batched over senders.

For each sender head h: (1) run the clean prompt with h's output `z` taken from the corrupt run and every other
head's `z` frozen at its clean value (MLPs recomputed unless frozen too), recording the receivers' inputs;
(2) run clean again with only the receivers' inputs patched to those recordings and read the metric. With the
logits as receiver, step (1)'s output is read directly. All senders run stacked along the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.models.base import HookedModel
from interp.patching.readout import as_readout
from interp.sites import Site

CONVENTIONS = ("logit_diff", "prob_change", "raw")
FREEZE = ("heads", "heads+mlps")
RECEIVER_COMPONENTS = ("q", "k", "v", "resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True, kw_only=True)
class PathPatchResult:
    """Scores per sender head: `scores` [layer, head] (NaN where the head was not a sender)."""

    scores: Tensor
    senders: list[tuple[int, int]]
    values: Tensor  # [n_senders] the batch-mean metric of each patched run
    baseline: dict[str, float]
    convention: str
    receivers: str

    def top(self, k: int, *, largest: bool = True) -> list[tuple[int, int]]:
        """The k senders with the highest (or lowest) scores."""
        s = torch.tensor([self.scores[layer, h].item() for layer, h in self.senders])
        order = s.argsort(descending=largest)[:k]
        return [self.senders[i] for i in order.tolist()]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": h,
                    "score": self.scores[layer, h].item(),
                    "metric": self.values[i].item(),
                }
                for i, (layer, h) in enumerate(self.senders)
            ]
        )

    def figure(self, *, title: str | None = None):
        from interp.plotting.figures import heatmap

        c = self.scores.shape
        return heatmap(
            torch.nan_to_num(self.scores).numpy(),
            x_labels=[str(h) for h in range(c[1])],
            y_labels=[str(i) for i in range(c[0])],
            x_title="head",
            y_title="layer",
            signed=True,
            title=title or f"Path patching to {self.receivers} ({self.convention})",
        )


def _positions(pos: Any, prompts: Any, batch: int, device: torch.device) -> Tensor | None:
    """None (all positions), or a LongTensor [batch] from an int, a tensor or a PromptSet position name."""
    if pos is None:
        return None
    if isinstance(pos, str):
        if not hasattr(prompts, "position"):
            raise ValueError(f"position name {pos!r} needs a PromptSet; the prompts were given as tensors")
        return prompts.position(pos).to(device)
    if isinstance(pos, int):
        return torch.full((batch,), pos, device=device, dtype=torch.long)
    pos = torch.as_tensor(pos, device=device).long()
    if pos.shape != (batch,):
        raise ValueError(f"positions must be one per prompt ({batch}); got shape {tuple(pos.shape)}")
    return pos


def _set_rows(act: Tensor, rows: slice, src: Tensor, head: int | None, pos: Tensor | None) -> None:
    """act[rows][b, pos_b, head] = src[b, pos_b, head] for each prompt b (all positions if pos is None)."""
    if pos is None:
        act[rows, :, slice(None) if head is None else head] = src[:, :, slice(None) if head is None else head]
        return
    b = torch.arange(src.shape[0], device=src.device)
    r = torch.arange(rows.start, rows.stop, device=src.device)
    if head is None:
        act[r, pos] = src[b, pos]
    else:
        act[r, pos, head] = src[b, pos, head]


def path_patch(
    model: HookedModel,
    *,
    clean: Any,
    corrupt: Tensor | None = None,
    metric: Any,
    receivers: str | Sequence[Site] = "logits",
    senders: str | Sequence[tuple[int, int]] = "all",
    freeze: str = "heads",
    sender_pos: Any = None,
    receiver_pos: Any = None,
    convention: str = "logit_diff",
    max_senders_per_pass: int = 64,
) -> PathPatchResult:
    """Score each sender head's effect through the receivers.

    `receivers`: "logits" (direct effect) or sites such as `Site("q", 9, head=6)` / `Site("resid_pre", 5)`.
    `senders`: "all" (every head in layers before the earliest receiver) or (layer, head) pairs.
    `sender_pos`/`receiver_pos`: None (all positions), an int, a tensor [batch] or a PromptSet position name.
    `convention`: "logit_diff" — (M_patched − M_clean) / (M_corrupt − M_clean) on batch means (Wang/Merullo;
    use a logit-difference metric); "prob_change" — mean over prompts of (p_patched − p_clean) / p_clean
    (Prakash; use an answer-probability metric); "raw" — M_patched − M_clean.
    """
    from interp.patching.sweep import _tokens_pair

    clean_t, corrupt_t, prompts = _tokens_pair(clean, corrupt)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}; got {convention!r}")
    if freeze not in FREEZE:
        raise ValueError(f"freeze must be one of {FREEZE}; got {freeze!r}")
    if clean_t.shape != corrupt_t.shape:
        raise ValueError(
            f"clean and corrupt tokens must have the same shape; got {tuple(clean_t.shape)} and "
            f"{tuple(corrupt_t.shape)}"
        )
    c = model.cfg
    L, H = c.n_layers, c.n_heads
    recv: list[Site] = []
    if receivers != "logits":
        if isinstance(receivers, str):
            raise ValueError(f"receivers must be 'logits' or a list of Sites; got {receivers!r}")
        for s in receivers:
            if s.component not in RECEIVER_COMPONENTS:
                raise ValueError(f"receiver {s}: component must be one of {RECEIVER_COMPONENTS}")
            model.check_site(s)
            recv.append(s)
    first_recv = min((s.layer for s in recv), default=L)
    if senders == "all":
        send = [
            (layer, h)
            for layer in range(L)
            for h in range(H)
            if layer < first_recv
            or (layer == first_recv and any(s.component.startswith("resid_post") for s in recv))
        ]
    else:
        send = [(int(a), int(b)) for a, b in senders]
    for layer, h in send:
        if not (0 <= layer < L and 0 <= h < H):
            raise ValueError(f"sender head {layer}.{h} out of range (layers 0..{L - 1}, heads 0..{H - 1})")
        if recv and layer > max(s.layer for s in recv):
            raise ValueError(f"sender {layer}.{h} comes after every receiver; it cannot affect them")
    if not send:
        raise ValueError("no sender heads: every head is at or after the receivers")
    dev = model.device
    B, T = clean_t.shape
    clean_t, corrupt_t = clean_t.to(dev), corrupt_t.to(dev)
    if prompts is not None and not hasattr(metric, "positions") and hasattr(metric, "from_prompts"):
        metric = metric.from_prompts(prompts)
    readout = as_readout(metric, batch=B, seq_len=T, d_vocab=c.d_vocab, device=dev)
    s_pos = _positions(sender_pos, prompts, B, dev)
    r_pos = _positions(receiver_pos, prompts, B, dev)

    z_sites = [Site("z", layer) for layer in range(L)]
    mlp_sites = [Site("mlp_out", layer) for layer in range(L)] if freeze == "heads+mlps" else []
    with torch.no_grad():
        logits_clean, clean_cache = model.run_with_cache(clean_t, z_sites + mlp_sites)
        logits_corrupt, corrupt_cache = model.run_with_cache(corrupt_t, z_sites)
        m_clean = readout.from_logits(logits_clean)  # [B]
        m_corrupt = readout.from_logits(logits_corrupt)
        values = []
        for start in range(0, len(send), max_senders_per_pass):
            group = send[start : start + max_senders_per_pass]
            values.append(
                _patched_values(
                    model, clean_t, group, clean_cache, corrupt_cache, recv, s_pos, r_pos, freeze, readout
                )
            )
        vals = torch.cat(values)  # [S, B]
    if convention == "logit_diff":
        denom = m_corrupt.mean() - m_clean.mean()
        score = (vals.mean(-1) - m_clean.mean()) / denom
    elif convention == "prob_change":
        score = ((vals - m_clean) / m_clean.clamp_min(1e-12)).mean(-1)
    else:
        score = vals.mean(-1) - m_clean.mean()
    grid = torch.full((L, H), float("nan"))
    for i, (layer, h) in enumerate(send):
        grid[layer, h] = score[i].item()
    return PathPatchResult(
        scores=grid,
        senders=send,
        values=vals.mean(-1).cpu(),
        convention=convention,
        baseline={"clean": m_clean.mean().item(), "corrupt": m_corrupt.mean().item()},
        receivers="logits" if not recv else ", ".join(str(s) for s in recv),
    )


def _patched_values(model, clean_t, group, clean_cache, corrupt_cache, recv, s_pos, r_pos, freeze, readout):
    """[S, B] metric values for a group of senders, stacked along the batch."""
    B = clean_t.shape[0]
    S = len(group)
    L = model.cfg.n_layers
    tokens = clean_t.repeat(S, 1)

    def freeze_z(layer: int):
        def hook(act: Tensor, site: Site) -> Tensor:
            act = clean_cache[site.hook_name].repeat(S, 1, 1, 1).clone()  # all heads frozen at clean
            for i, (sl, sh) in enumerate(group):
                if sl == layer:
                    _set_rows(act, slice(i * B, (i + 1) * B), corrupt_cache[site.hook_name], sh, s_pos)
            return act

        return hook

    def freeze_mlp(act: Tensor, site: Site) -> Tensor:
        return clean_cache[site.hook_name].repeat(S, 1, 1)

    hooks = [(Site("z", layer), freeze_z(layer)) for layer in range(L)]
    if freeze == "heads+mlps":
        hooks += [(Site("mlp_out", layer), freeze_mlp) for layer in range(L)]
    if not recv:  # direct effect on the logits
        logits = model.run_with_hooks(tokens, hooks)
        return _values(readout, logits, S, B)
    # step 1: record the receivers' inputs
    recorded: dict[str, Tensor] = {}
    model.run_with_hooks(tokens, hooks, cache=recv, _cache_out=recorded)
    # step 2: a clean run with only the receivers patched
    patch_hooks = []
    for site in recv:

        def rhook(act: Tensor, s: Site, rec=recorded[site.hook_name], head=site.head) -> Tensor:
            out = act.clone()
            if head is None and r_pos is None:
                return rec
            rows = torch.arange(out.shape[0], device=out.device)
            if r_pos is None:
                out[:, :, head] = rec[:, :, head]
            else:
                p = r_pos.repeat(S)
                if head is None:
                    out[rows, p] = rec[rows, p]
                else:
                    out[rows, p, head] = rec[rows, p, head]
            return out

        patch_hooks.append((Site(site.component, site.layer), rhook))
    logits = model.run_with_hooks(tokens, patch_hooks)
    return _values(readout, logits, S, B)


def _values(readout, logits: Tensor, S: int, B: int) -> Tensor:
    from interp.patching.engine import read_full

    return read_full(readout, logits.view(S, B, *logits.shape[1:]))
