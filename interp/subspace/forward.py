"""Last-token forward passes over right-padded prompts: the one helper the knob analyses run through.

Every analysis of Minder et al. 2025 ("Controllable Context Sensitivity and the Knob Behind It") reads or writes
one activation at each prompt's last real token `end[b]` and scores the next-token logits there. Rows are
right-padded, so pads follow every real token and causal attention never sees them: no attention mask is needed,
and each batch is trimmed to its longest prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.models.base import HookedModel, HookFn, Hooks
from interp.patching.inputs import check_tokens
from interp.sites import Site

Rows = Int[Tensor, " batch"]
LastLogits = Float[Tensor, "batch vocab"]
HooksFor = Callable[[Rows], Hooks]  # the hooks of one batch, given its row indices into the full set


def last_token_hook(end: Rows, edit: Callable[[Tensor], Tensor]) -> HookFn:
    """A hook replacing each row's activation at its last token `end[b]` by `edit(act[b, end[b]])`.

    `edit` gets and returns the last-token slice `[batch, ...]` (e.g. `[batch, d_model]` for `resid_post`,
    `[batch, head, d_head]` for `z`); every other position is left untouched.
    """

    def hook(act: Tensor, site: Site) -> Tensor:
        rows = torch.arange(act.shape[0], device=act.device)
        at = end.to(act.device)
        out = act.clone()
        out[rows, at] = edit(act[rows, at]).to(act.dtype)
        return out

    return hook


def check_rows(tokens: Tensor, end: Tensor) -> None:
    """Raise before any compute if `end` does not index one real position per row of `tokens`."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos]; got shape {tuple(tokens.shape)}")
    if end.shape != (tokens.shape[0],):
        raise ValueError(
            f"end must hold one position per prompt, shape ({tokens.shape[0]},); got {tuple(end.shape)}"
        )
    if len(end) and (int(end.min()) < 0 or int(end.max()) >= tokens.shape[1]):
        raise ValueError(
            f"end positions must lie in [0, {tokens.shape[1]}); got [{int(end.min())}, {int(end.max())}]"
        )


def forward_last(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    end: Rows,
    *,
    hooks: HooksFor | None = None,
    read: Sequence[Site] = (),
    batch_size: int = 64,
) -> tuple[LastLogits, dict[str, Tensor]]:
    """Logits `[batch, vocab]` (float32) and the activations of `read` at each row's last token.

    `hooks(rows)` gives the hooks of the batch holding `rows` (they may depend on the rows, e.g. per-row source
    activations). Activations come back keyed by TL hook name, narrowed to the last token: `[batch, ...]`.
    Runs under the caller's grad mode (so DAS can train through it).
    """
    check_tokens(model, tokens, name="tokens", caller="forward_last")
    check_rows(tokens, end)
    logits: list[Tensor] = []
    acts: dict[str, list[Tensor]] = {s.hook_name: [] for s in read}
    for start in range(0, tokens.shape[0], batch_size):
        rows = torch.arange(start, min(start + batch_size, tokens.shape[0]))
        at = end[rows].to(model.device)
        width = int(at.max()) + 1
        batch = tokens[rows, :width]
        out, cache = model.run_with_cache(batch, read, hooks=hooks(rows) if hooks is not None else ())
        b = torch.arange(len(rows), device=out.device)
        logits.append(out[b, at.to(out.device)].float())
        for name in acts:
            acts[name].append(cache[name][b, at.to(cache[name].device)])
    return torch.cat(logits), {k: torch.cat(v) for k, v in acts.items()}


def _torch_modules(model: HookedModel) -> list[torch.nn.Module]:
    return [
        m
        for m in (getattr(model, "tl", None), getattr(model, "hf_model", None))
        if isinstance(m, torch.nn.Module)
    ]


@contextlib.contextmanager
def frozen(model: HookedModel) -> Iterator[None]:
    """Turn off gradients of the model's own weights (restored on exit), so training a subspace through the
    model computes no weight gradients."""
    params = [p for m in _torch_modules(model) for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
