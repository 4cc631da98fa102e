"""Distributed alignment search (DAS) for the context/prior knob (Minder et al. 2025).

A rank-r subspace with orthonormal basis `U` (`d x r`, torch's orthogonal parametrisation; r = 1 in the paper)
at one layer's block output (`resid_post`), last token. The interchange intervention

    h <- (I - U Uᵀ) h + U Uᵀ h_src

is trained with cross-entropy on intent-swapped pairs: the target is (context, query, intent), the source the
same (context, query) with the opposite intent, and the label the answer under the source's intent. Only
confident pairs (both intents answered right) are used. A difference-of-means direction is the baseline.

`pairs="no_intent"` (not the paper's) trains for the knob's use instead: each target is the prompt that states
no intent, the source its twin that states one (either intent), the label the source's answer, so the subspace
must carry the intent into prompts without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from interp.models.base import HookedModel
from interp.sites import Site
from interp.subspace.ccs import CCSPairs, InterchangeData, check_twins, predict
from interp.subspace.forward import HooksFor, forward_last, frozen, last_token_hook

Hidden = Float[Tensor, "... d_model"]
Coords = Float[Tensor, "... rank"]


class _Basis(nn.Module):
    """Holds the `d x r` matrix that the orthogonal parametrisation keeps orthonormal."""

    def __init__(self, d_model: int, rank: int, generator: torch.Generator | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(d_model, rank), generator=generator))


class Subspace(nn.Module):
    """A rank-r subspace of the residual stream: orthonormal basis `U` `[d_model, rank]` (DAS's rotation).

    `interchange(h, h_src)` is the DAS intervention; `set_coordinates(h, c)` the paper's knob (steering);
    `coordinates(h)` reads `Uᵀh`. Computations run in float32 and return float32.
    """

    def __init__(
        self, d_model: int, rank: int = 1, *, basis: Tensor | None = None, seed: int | None = None
    ) -> None:
        super().__init__()
        if not 1 <= rank <= d_model:
            raise ValueError(f"rank must lie in [1, d_model={d_model}]; got {rank}")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.rotation = orthogonal(_Basis(d_model, rank, gen))
        if basis is not None:
            self.set_basis(basis)

    @property
    def d_model(self) -> int:
        return int(self.basis.shape[0])

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def basis(self) -> Float[Tensor, "d_model rank"]:
        weight: Tensor = self.rotation.weight  # type: ignore[assignment]  # orthogonal() parametrization
        return weight

    def set_basis(self, basis: Float[Tensor, "d_model rank"]) -> None:
        """Set `U` to `basis`, which must have orthonormal columns."""
        basis = basis.detach().float().cpu()
        if basis.ndim == 1:
            basis = basis[:, None]
        if basis.shape != (self.d_model, self.rank):
            raise ValueError(f"basis must be [{self.d_model}, {self.rank}]; got {tuple(basis.shape)}")
        gram = basis.T @ basis
        if not torch.allclose(gram, torch.eye(self.rank), atol=1e-4):
            raise ValueError("basis columns must be orthonormal (UᵀU = I)")
        dev = self.basis.device
        with torch.no_grad():
            self.rotation.weight = basis.to(dev)

    @classmethod
    def from_direction(cls, direction: Float[Tensor, " d_model"]) -> Subspace:
        """The rank-1 subspace spanned by `direction` (normalised)."""
        v = direction.detach().float().reshape(-1)
        norm = v.norm()
        if not norm > 0:
            raise ValueError("cannot span a subspace with a zero direction")
        return cls(v.numel(), 1, basis=(v / norm)[:, None])

    def projection(self) -> Float[Tensor, "d_model d_model"]:
        """`P = U Uᵀ`."""
        return self.basis @ self.basis.T

    def coordinates(self, h: Hidden) -> Coords:
        """`Uᵀh` `[..., rank]`."""
        return h.float() @ self.basis.to(h.device)

    def interchange(self, h: Hidden, h_src: Hidden) -> Hidden:
        """`(I - UUᵀ)h + UUᵀh_src`: the source's coordinates in the subspace, the target's outside it."""
        u = self.basis.to(h.device)
        return h.float() + (h_src.float().to(h.device) - h.float()) @ u @ u.T

    def set_coordinates(self, h: Hidden, c: float | Tensor) -> Hidden:
        """`(I - UUᵀ)h + Uc`: set the coordinates `Uᵀh` to `c` (a scalar or `[rank]`), the rest unchanged."""
        u = self.basis.to(h.device)
        c = torch.as_tensor(c, dtype=torch.float32, device=h.device)
        return h.float() + (c - h.float() @ u) @ u.T

    def flipped(self) -> Subspace:
        """The same subspace with the basis negated (a rank-1 direction pointing the other way)."""
        return Subspace(self.d_model, self.rank, basis=-self.basis.detach().cpu())


# ------------------------------------------------------------------------------------------------- data
def intent_swap_data(ccs: CCSPairs) -> InterchangeData:
    """Both directions of every pair: (context target, prior source) and (prior target, context source)."""
    ps = ccs.prompts
    tgt = torch.cat([ccs.rows("context"), ccs.rows("prior")])
    src = torch.cat([ccs.rows("prior"), ccs.rows("context")])
    return InterchangeData(
        target_tokens=ps.clean[tgt],
        target_end=ps.end[tgt],
        source_tokens=ps.clean[src],
        source_end=ps.end[src],
        source_answer=ps.answer_ids[src],
        target_answer=ps.answer_ids[tgt],
    )


def no_intent_data(ccs_intent: CCSPairs, ccs_none: CCSPairs) -> InterchangeData:
    """Every pair twice: its no-intent prompt as the target, each intent's prompt as the source (label: the
    source's answer). `ccs_none` must hold the same pairs as `ccs_intent` without the intent (`ccs_sets`)."""
    check_twins(ccs_intent, ccs_none)
    si, sn = ccs_intent.prompts, ccs_none.prompts
    tgt = ccs_none.rows("context").repeat(2)  # both rows of a no-intent pair are the same prompt
    src = torch.cat([ccs_intent.rows("context"), ccs_intent.rows("prior")])
    return InterchangeData(
        target_tokens=sn.clean[tgt],
        target_end=sn.end[tgt],
        source_tokens=si.clean[src],
        source_end=si.end[src],
        source_answer=si.answer_ids[src],
        target_answer=sn.answer_ids[tgt],
    )


DAS_PAIRS: tuple[str, ...] = ("intent_swap", "no_intent")


def knob_pairs(pairs: str, ccs: CCSPairs, ccs_none: CCSPairs | None = None) -> InterchangeData:
    """The interchange data of kind `pairs` ("intent_swap": the paper's; "no_intent": needs `ccs_none`)."""
    if pairs not in DAS_PAIRS:
        raise ValueError(f"unknown DAS pairs {pairs!r}; valid: {', '.join(DAS_PAIRS)}")
    if pairs == "intent_swap":
        return intent_swap_data(ccs)
    if ccs_none is None:
        raise ValueError("pairs='no_intent' needs the no-intent twins of the pairs (ccs_none)")
    return no_intent_data(ccs, ccs_none)


def confident_pairs(model: HookedModel, ccs: CCSPairs, *, batch_size: int = 64) -> Bool[Tensor, " n_pairs"]:
    """Pairs whose two intents `model` answers right (their answers differ by construction of `CCSPairs`)."""
    preds = predict(model, ccs.prompts, batch_size=batch_size)
    return (preds[ccs.rows("context")] == ccs.context_answer) & (preds[ccs.rows("prior")] == ccs.prior_answer)


def confident_twins(
    model: HookedModel,
    ccs: CCSPairs,
    ccs_none: CCSPairs | None = None,
    *,
    confident_only: bool = True,
    batch_size: int = 64,
) -> tuple[CCSPairs, CCSPairs | None]:
    """The pairs `model` answers right under both intents (the paper's confident-pair filter), and the same pairs
    of their no-intent twins `ccs_none` when given; both unchanged when not `confident_only`."""
    if not confident_only:
        return ccs, ccs_none
    keep = confident_pairs(model, ccs, batch_size=batch_size)
    if not bool(keep.any()):
        raise ValueError(
            f"{model.name} answers none of {len(ccs)} CCS pairs right under both intents: DAS has no "
            "confident pairs to learn from (train on all pairs instead: confident_only=False)"
        )
    idx = keep.nonzero().flatten()
    return ccs.subset(idx), (None if ccs_none is None else ccs_none.subset(idx))


def confident_subset(model: HookedModel, ccs: CCSPairs, *, batch_size: int = 64) -> CCSPairs:
    """The pairs `model` answers right under both intents (the paper's confident-pair filter)."""
    return confident_twins(model, ccs, batch_size=batch_size)[0]


# ------------------------------------------------------------------------------------------------- DAS
@dataclass(frozen=True, kw_only=True)
class DASConfig:
    """DAS training (the paper: rank 1, one epoch, batch 8, lr 1e-3)."""

    layer: int
    rank: int = 1
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0


@dataclass(frozen=True, kw_only=True, eq=False)
class DASResult:
    """A trained subspace with its config and the loss of every training step."""

    subspace: Subspace
    config: DASConfig
    losses: list[float] = field(default_factory=list)


def resid_at_last(
    model: HookedModel, tokens: Tensor, end: Tensor, layer: int, *, batch_size: int = 64
) -> Float[Tensor, "n d_model"]:
    """The block output (`resid_post`) of `layer` at each prompt's last token, without gradients."""
    site = Site("resid_post", layer)
    with torch.no_grad():
        _, acts = forward_last(model, tokens, end, read=[site], batch_size=batch_size)
    return acts[site.hook_name].float()


def _interchange_hooks(subspace: Subspace, layer: int, end: Tensor, h_src: Tensor) -> HooksFor:
    site = Site("resid_post", layer)
    return lambda rows: [(site, last_token_hook(end[rows], lambda at: subspace.interchange(at, h_src[rows])))]


def _check_layer(model: HookedModel, layer: int) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range: {model.name} has layers 0..{model.cfg.n_layers - 1}")


def train_das(model: HookedModel, data: InterchangeData, cfg: DASConfig) -> DASResult:
    """Train a rank-`cfg.rank` subspace at `resid_post` of `cfg.layer` (last token) with cross-entropy on
    `data.source_answer` under the interchange intervention; the model's weights stay frozen."""
    _check_layer(model, cfg.layer)
    if len(data) == 0:
        raise ValueError("no training pairs (after confident-pair filtering?)")
    subspace = Subspace(model.cfg.d_model, cfg.rank, seed=cfg.seed).to(model.device)
    h_src = resid_at_last(model, data.source_tokens, data.source_end, cfg.layer)
    opt = torch.optim.Adam(subspace.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    with frozen(model), torch.enable_grad():
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(data), generator=gen).split(cfg.batch_size):
                end = data.target_end[idx]
                hooks = _interchange_hooks(subspace, cfg.layer, end, h_src[idx])
                logits, _ = forward_last(
                    model, data.target_tokens[idx], end, hooks=hooks, batch_size=len(idx)
                )
                loss = F.cross_entropy(logits, data.source_answer[idx].to(logits.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    return DASResult(subspace=subspace.cpu(), config=cfg, losses=losses)


def interchange_accuracy(
    model: HookedModel, subspace: Subspace, layer: int, data: InterchangeData, *, batch_size: int = 64
) -> float:
    """Share of pairs whose intervened prediction is the source-intent answer (the paper's IIA)."""
    _check_layer(model, layer)
    h_src = resid_at_last(model, data.source_tokens, data.source_end, layer, batch_size=batch_size)
    hooks = _interchange_hooks(subspace, layer, data.target_end, h_src)
    with torch.no_grad():
        logits, _ = forward_last(
            model, data.target_tokens, data.target_end, hooks=hooks, batch_size=batch_size
        )
    return float((logits.argmax(-1).cpu() == data.source_answer).float().mean())


def mean_difference_subspace(
    model: HookedModel, ccs: CCSPairs, layer: int, *, batch_size: int = 64
) -> Subspace:
    """The baseline direction: mean last-token `resid_post` of prior-intent prompts minus context-intent ones."""
    _check_layer(model, layer)
    ps = ccs.prompts
    h = resid_at_last(model, ps.clean, ps.end, layer, batch_size=batch_size)
    return Subspace.from_direction(h[ccs.rows("prior")].mean(0) - h[ccs.rows("context")].mean(0))


def orient_prior_positive(
    model: HookedModel, subspace: Subspace, ccs: CCSPairs, layer: int, *, batch_size: int = 64
) -> Subspace:
    """A rank-1 subspace oriented so that prior-intent prompts have the larger mean coordinate `uᵀh`."""
    if subspace.rank != 1:
        raise ValueError(f"only a rank-1 subspace has a sign to orient; got rank {subspace.rank}")
    ps = ccs.prompts
    with torch.no_grad():
        coords = subspace.coordinates(resid_at_last(model, ps.clean, ps.end, layer, batch_size=batch_size))[
            :, 0
        ]
    gap = coords[ccs.rows("prior")].mean() - coords[ccs.rows("context")].mean()
    return subspace if gap >= 0 else subspace.flipped()


def fit_knob(
    model: HookedModel,
    train: CCSPairs,
    test: CCSPairs,
    layer: int,
    *,
    rank: int = 1,
    epochs: int = 3,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    confident_only: bool = True,
    pairs: str = "intent_swap",
    train_none: CCSPairs | None = None,
    test_none: CCSPairs | None = None,
) -> tuple[Subspace, list[float], float]:
    """DAS at `layer` on the (confident) training pairs: (subspace, losses, held-out interchange accuracy on the
    (confident) test pairs, same kind of pairs); a rank-1 subspace comes back oriented prior-positive.

    `pairs`: "intent_swap" (the paper) or "no_intent" (targets state no intent; needs `train_none`/`test_none`,
    the no-intent twins of `train`/`test`). Confidence is judged on the prompts that state the intent.
    """
    knob_pairs(pairs, train, train_none)  # bad `pairs` / missing twins fail before any forward pass
    knob_pairs(pairs, test, test_none)

    train_c, train_n = confident_twins(model, train, train_none, confident_only=confident_only)
    test_c, test_n = confident_twins(model, test, test_none, confident_only=confident_only)
    res = train_das(
        model,
        knob_pairs(pairs, train_c, train_n),
        DASConfig(layer=layer, rank=rank, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
    )
    sub = orient_prior_positive(model, res.subspace, train_c, layer) if rank == 1 else res.subspace
    return sub, res.losses, interchange_accuracy(model, sub, layer, knob_pairs(pairs, test_c, test_n))
