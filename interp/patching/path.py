"""Path patching (Wang et al. 2022, App. B; Merullo et al. 2024; Prakash et al. 2024), batched over senders.

For each sender head h: (1) run the clean prompt with h's output `z` taken from the corrupt run and every other
head's `z` frozen at its clean value (MLPs recomputed unless frozen too), recording the receivers' inputs;
(2) run clean again with only the receivers' inputs patched to those recordings and read the metric. With the
logits as receiver, step (1)'s output is read directly. All senders run stacked along the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.models.base import HookedModel
from interp.patching.inputs import (
    FiniteGuard,
    InputError,
    MetricLike,
    NonFinite,
    Prompts,
    RowPositions,
    Tokens,
    as_index,
    bind_inputs,
    bind_row_position,
    check_choice,
    check_count,
)
from interp.patching.readout import Readout, values_from_logits
from interp.progress import progress_bar
from interp.sites import Site

RowPositionSpec = int | str | RowPositions | None

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
    clean: Prompts,
    corrupt: Tokens | None = None,
    metric: MetricLike,
    attention_mask: Tokens | None = None,
    receivers: str | Sequence[Site] = "logits",
    senders: str | Sequence[tuple[int, int]] = "all",
    freeze: str = "heads",
    sender_pos: RowPositionSpec = None,
    receiver_pos: RowPositionSpec = None,
    convention: str = "logit_diff",
    max_senders_per_pass: int = 64,
    nonfinite: NonFinite = "raise",
    progress: bool | None = None,
) -> PathPatchResult:
    """Score each sender head's effect through the receivers.

    `clean` is a PromptSet, or clean tokens with `corrupt` (and an `attention_mask` they share, padded on either
    side: every forward pass gets the mask).

    `receivers`: "logits" (direct effect) or sites such as `Site("q", 9, head=6)` / `Site("resid_pre", 5)`.
    `senders`: "all" (every head in layers before the earliest receiver) or (layer, head) pairs.
    `sender_pos`/`receiver_pos`: None (all positions), an int, a tensor [batch] or a PromptSet position name.
    `convention`: "logit_diff" — (M_patched − M_clean) / (M_corrupt − M_clean) on batch means (Wang/Merullo;
    use a logit-difference metric); "prob_change" — mean over prompts of (p_patched − p_clean) / p_clean
    (Prakash; use an answer-probability metric); "raw" — M_patched − M_clean.
    `nonfinite`: "raise" if the metric is NaN/inf anywhere, "warn" to keep such scores; `progress`: a progress
    bar on long runs (None: on terminals unless INTERP_PROGRESS=0).
    """
    caller = "path_patch"
    check_choice(convention, "convention", CONVENTIONS, caller)
    check_choice(freeze, "freeze", FREEZE, caller)
    check_count(max_senders_per_pass, "max_senders_per_pass", caller)
    finite = FiniteGuard(caller, nonfinite)
    c = model.cfg
    L, H = c.n_layers, c.n_heads
    recv: list[Site] = []
    if receivers != "logits":
        if isinstance(receivers, str) or not isinstance(receivers, Sequence):
            raise InputError(f"receivers must be 'logits' or a list of Sites; got {receivers!r}")
        if not receivers:
            raise InputError("receivers is empty: give 'logits' or at least one Site")
        for s in receivers:
            if not isinstance(s, Site):
                raise TypeError(f"receivers must be Sites (e.g. Site('q', 9, head=6)); got {s!r}")
            if s.component not in RECEIVER_COMPONENTS:
                raise InputError(f"receiver {s}: component must be one of {RECEIVER_COMPONENTS}")
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
        if isinstance(senders, str):
            raise InputError(f"senders must be 'all' or (layer, head) pairs; got {senders!r}")
        send = []
        for pair in senders:
            idx = (
                [as_index(v) for v in pair] if isinstance(pair, (tuple, list)) and len(pair) == 2 else [None]
            )
            if None in idx:
                raise TypeError(f"senders must be (layer, head) pairs of ints; got {pair!r}")
            send.append((idx[0], idx[1]))
    for layer, h in send:
        if not (0 <= layer < L and 0 <= h < H):
            raise InputError(f"sender head {layer}.{h} out of range (layers 0..{L - 1}, heads 0..{H - 1})")
        if recv and layer > max(s.layer for s in recv):
            raise InputError(f"sender {layer}.{h} comes after every receiver; it cannot affect them")
    if not send:
        raise InputError("no sender heads: every head is at or after the receivers")
    inputs = bind_inputs(
        model,
        clean,
        corrupt,
        metric=metric,
        caller=caller,
        attention_mask=attention_mask,
        allow_left_padding=True,
    )
    readout = inputs.readout
    s_pos = bind_row_position(sender_pos, inputs, name="sender_pos")
    r_pos = bind_row_position(receiver_pos, inputs, name="receiver_pos")
    clean_t, corrupt_t, mask = inputs.clean, inputs.corrupt, inputs.attention_mask

    z_sites = [Site("z", layer) for layer in range(L)]
    mlp_sites = [Site("mlp_out", layer) for layer in range(L)] if freeze == "heads+mlps" else []
    with torch.no_grad():
        logits_clean, clean_cache = model.run_with_cache(clean_t, z_sites + mlp_sites, attention_mask=mask)
        logits_corrupt, corrupt_cache = model.run_with_cache(corrupt_t, z_sites, attention_mask=mask)
        m_clean = readout.from_logits(logits_clean)  # [B]
        m_corrupt = readout.from_logits(logits_corrupt)
        del logits_clean, logits_corrupt
        finite(m_clean[None], lambda i: "the clean run")
        finite(m_corrupt[None], lambda i: "the corrupt run")
        values = []
        with progress_bar(len(send), "path_patch senders", progress=progress, unit="sender") as bar:
            for start in range(0, len(send), max_senders_per_pass):
                group = send[start : start + max_senders_per_pass]
                values.append(
                    _patched_values(
                        model,
                        clean_t,
                        mask,
                        group,
                        clean_cache,
                        corrupt_cache,
                        recv,
                        s_pos,
                        r_pos,
                        freeze,
                        readout,
                    )
                )
                bar.update(len(group))
        vals = torch.cat(values)  # [S, B]
    finite(vals, lambda i: f"sender {send[i][0]}.{send[i][1]}")
    finite.done()
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


def _patched_values(
    model, clean_t, mask, group, clean_cache, corrupt_cache, recv, s_pos, r_pos, freeze, readout
):
    """[S, B] metric values for a group of senders, stacked along the batch."""
    B = clean_t.shape[0]
    S = len(group)
    L = model.cfg.n_layers
    tokens = clean_t.repeat(S, 1)
    masks = None if mask is None else mask.repeat(S, 1)

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
        logits = model.run_with_hooks(tokens, hooks, attention_mask=masks)
        return _values(readout, logits, S, B)
    # step 1: record the receivers' inputs
    _, recorded = model.run_with_cache(tokens, recv, hooks=hooks, attention_mask=masks)
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
    logits = model.run_with_hooks(tokens, patch_hooks, attention_mask=masks)
    return _values(readout, logits, S, B)


def _values(readout: Readout, logits: Tensor, S: int, B: int) -> Tensor:
    return values_from_logits(readout, logits.view(S, B, *logits.shape[1:]))
