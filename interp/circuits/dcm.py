"""Desiderata-based Component Masking (Davies et al. 2023; as used by Prakash et al. 2024, `experiment_2/DCM.py`).

Each head of a group gets a mask m_i ∈ [0, 1] (initialised to 1); at the group's position its output becomes
z_i ← m_i·z_i^base + (1 − m_i)·z_i^source. The loss −mean_b logit_b(y_b) + λ·Σ_i (1 − m_i) is minimised with Adam
(m clamped to [0, 1] after every step); every `eval_every` steps the rounded mask is scored on validation pairs
and the best one kept (ties go to more heads). The heads with rounded m = 0 are the ones the desideratum selects.

Desiderata: `interp.tasks.desiderata` (entity tracking: positional, object value, box label value) for hub models;
`ioi_desiderata` for the organisms: "io_name" (the source names other people in the same order: a group that
carries the indirect object's identity makes the model say the source's IO) and "io_position" (the source has
other names in the flipped order: a group that carries where the IO is makes the model say the base's S).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.circuits.search import resolve_position
from interp.models.base import HookedModel
from interp.patching.inputs import check_prompt_set
from interp.sites import Site
from interp.tasks.promptset import PromptSet

IOI_DESIDERATA: tuple[str, ...] = ("io_name", "io_position")
Mask = Float[Tensor, " heads"]


@dataclass(frozen=True, kw_only=True)
class DCMConfig:
    """Prakash et al.'s settings: λ 0.01, Adam lr 0.1, 2 epochs, batch 32, validation every 4 steps, 50/25/25."""

    lam: float = 0.01
    lr: float = 0.1
    epochs: int = 2
    batch_size: int = 32
    eval_every: int = 4
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    seed: int = 0

    def __post_init__(self) -> None:
        if abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split must be three positive fractions summing to 1, got {self.split}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("epochs, batch_size and eval_every must be >= 1")


@dataclass(frozen=True, kw_only=True, eq=False)
class DCMResult:
    """The learned mask (the best rounded one), the selected heads (rounded m = 0) and their accuracies."""

    heads: list[tuple[int, int]]
    mask: Tensor  # [n_heads] the best rounded mask
    raw_mask: Tensor  # [n_heads] the continuous mask at the end of training
    selected: list[tuple[int, int]]
    val_accuracy: float
    test_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    desideratum: str = ""

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": h,
                    "mask": float(self.mask[i]),
                    "raw": float(self.raw_mask[i]),
                    "selected": (layer, h) in self.selected,
                }
                for i, (layer, h) in enumerate(self.heads)
            ]
        )


def _group_hooks(
    heads: list[tuple[int, int]],
    m: Tensor,
    source_z: dict[int, Tensor],
    base_pos: Tensor | None,
    source_pos: Tensor | None,
) -> list[tuple[Site, Any]]:
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for i, (layer, h) in enumerate(heads):
        by_layer.setdefault(layer, []).append((i, h))
    hooks = []
    for layer, items in by_layer.items():
        idx = torch.tensor([i for i, _ in items])
        hs = torch.tensor([h for _, h in items])

        def fn(z: Tensor, site: Site, idx=idx, hs=hs, layer=layer) -> Tensor:
            src = source_z[layer]
            w = m[idx.to(m.device)].to(z.dtype)  # (k,)
            out = z.clone()
            if base_pos is None:
                out[:, :, hs] = w[:, None] * z[:, :, hs] + (1 - w[:, None]) * src[:, :, hs]
            else:
                b = torch.arange(z.shape[0], device=z.device)
                zb = z[b, base_pos][:, hs]  # (B, k, d_head)
                zs = src[b, source_pos][:, hs]
                out[b[:, None], base_pos[:, None], hs[None]] = w[:, None] * zb + (1 - w[:, None]) * zs
            return out

        hooks.append((Site("z", layer), fn))
    return hooks


def masked_logits(
    model: HookedModel,
    *,
    base: Int[Tensor, "batch pos"],
    source: Int[Tensor, "batch pos"],
    heads: list[tuple[int, int]],
    mask: Mask,
    base_pos: Tensor | None = None,
    source_pos: Tensor | None = None,
    source_z: dict[int, Tensor] | None = None,
) -> Tensor:
    """Logits of the base prompts with each group head's output mixed m·base + (1 − m)·source at the positions
    (None: every position; base and source then need one length). Differentiable in `mask`."""
    if mask.shape != (len(heads),):
        raise ValueError(f"mask must have one entry per head ({len(heads)}), got shape {tuple(mask.shape)}")
    dev = model.device
    if source_z is None:
        layers = sorted({layer for layer, _ in heads})
        with torch.no_grad():
            _, cache = model.run_with_cache(source.to(dev), [Site("z", layer) for layer in layers])
        source_z = {layer: cache[f"blocks.{layer}.attn.hook_z"] for layer in layers}
    bp = None if base_pos is None else base_pos.to(dev)
    sp = None if source_pos is None else source_pos.to(dev)
    return model.run_with_hooks(base.to(dev), _group_hooks(heads, mask.to(dev), source_z, bp, sp))


def dcm_loss(logits_at_end: Float[Tensor, "batch vocab"], targets: Tensor, mask: Mask, lam: float) -> Tensor:
    """−mean_b logit_b(target_b) + λ Σ_i (1 − m_i)."""
    b = torch.arange(targets.shape[0], device=logits_at_end.device)
    return -logits_at_end[b, targets.to(logits_at_end.device)].float().mean() + lam * (1 - mask).sum()


def _split(n: int, split: tuple[float, float, float], seed: int) -> tuple[list[int], list[int], list[int]]:
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    a = int(round(split[0] * n))
    b = a + int(round(split[1] * n))
    return perm[:a], perm[a:b], perm[b:]


def dcm(
    model: HookedModel,
    *,
    base: PromptSet,
    source: PromptSet,
    targets: Tensor,
    heads: list[tuple[int, int]],
    position: str | None = "END",
    source_position: str | None = None,
    config: DCMConfig = DCMConfig(),
    desideratum: str = "",
) -> DCMResult:
    """Learn which heads of `heads` carry the desideratum (Davies et al. 2023 DCM, Prakash et al. 2024 settings).

    `base` / `source`: aligned prompt sets (row i of each is one pair); `targets`: the token each pair should
    produce when the right heads are patched; `position`: the base position name where the group acts
    (`source_position`: the source's, default the same name); None patches every position.
    """
    check_prompt_set(base, "dcm (base)")
    check_prompt_set(source, "dcm (source)")
    n = len(base)
    if not isinstance(targets, Tensor) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError("dcm: targets must be a LongTensor [n] of token ids")
    if len(source) != n or targets.shape != (n,):
        raise ValueError(f"base ({n}), source ({len(source)}) and targets {tuple(targets.shape)} must align")
    if not heads:
        raise ValueError("DCM needs at least one head in the group")
    if int(targets.min()) < 0 or int(targets.max()) >= model.cfg.d_vocab:
        raise ValueError(f"dcm: targets must be token ids in [0, {model.cfg.d_vocab})")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    bad = [h for h in heads if not (0 <= h[0] < L and 0 <= h[1] < H)]
    if bad:
        raise ValueError(f"heads {bad} do not exist (layers 0..{L - 1}, heads 0..{H - 1})")
    if position is None and base.clean.shape != source.clean.shape:
        raise ValueError("patching every position needs base and source prompts of one length")
    if n < 4:
        raise ValueError(f"DCM needs at least 4 pairs to split into train/val/test, got {n}")
    bpos = resolve_position(base, position) if position else None
    spos = resolve_position(source, source_position or position) if position else None
    train, val, test = _split(n, config.split, config.seed)
    dev = model.device
    layers = sorted({layer for layer, _ in heads})
    with torch.no_grad():
        _, cache = model.run_with_cache(
            source.clean.to(dev),
            [Site("z", layer) for layer in layers],
            attention_mask=source.attention_mask.to(dev),
        )
    source_z = {layer: cache[f"blocks.{layer}.attn.hook_z"] for layer in layers}

    def logits_at_end(rows: list[int], m: Tensor) -> Tensor:
        r = torch.tensor(rows)
        sz = {k: v[r.to(dev)] for k, v in source_z.items()}
        lg = masked_logits(
            model,
            base=base.clean[r],
            source=source.clean[r],
            heads=heads,
            mask=m,
            base_pos=None if bpos is None else bpos[r],
            source_pos=None if spos is None else spos[r],
            source_z=sz,
        )
        return lg[torch.arange(len(rows), device=lg.device), base.end[r].to(lg.device)]

    def accuracy(rows: list[int], m: Tensor) -> float:
        with torch.no_grad():
            pred = logits_at_end(rows, m).argmax(-1).cpu()
        return float((pred == targets[torch.tensor(rows)].cpu()).float().mean())

    m = torch.ones(len(heads), device=dev, requires_grad=True)
    opt = torch.optim.Adam([m], lr=config.lr)
    rng = random.Random(config.seed)
    best_mask, best_acc, step, history = torch.ones(len(heads)), -1.0, 0, []
    for _ in range(config.epochs):
        order = list(train)
        rng.shuffle(order)
        for i in range(0, len(order), config.batch_size):
            rows = order[i : i + config.batch_size]
            with torch.enable_grad():
                loss = dcm_loss(logits_at_end(rows, m), targets[torch.tensor(rows)], m, config.lam)
                (m.grad,) = torch.autograd.grad(loss, [m])
            opt.step()
            with torch.no_grad():
                m.clamp_(0.0, 1.0)
            step += 1
            if step % config.eval_every == 0:
                rounded = m.detach().round()
                acc = accuracy(val, rounded)
                n_sel = int((rounded == 0).sum())
                history.append({"step": step, "loss": float(loss), "val_accuracy": acc, "n_selected": n_sel})
                best_sel = int((best_mask == 0).sum())
                if acc > best_acc or (acc == best_acc and n_sel > best_sel):
                    best_mask, best_acc = rounded.cpu(), acc
    if best_acc < 0:  # fewer steps than eval_every: score the final mask
        best_mask = m.detach().round().cpu()
        best_acc = accuracy(val, best_mask.to(dev))
    selected = [h for h, v in zip(heads, best_mask.tolist(), strict=True) if v == 0]
    return DCMResult(
        heads=list(heads),
        mask=best_mask,
        raw_mask=m.detach().cpu(),
        selected=selected,
        val_accuracy=best_acc,
        test_accuracy=accuracy(test, best_mask.to(dev)),
        history=history,
        desideratum=desideratum,
    )


def ioi_desiderata(
    tokenizer: Any, kind: str, n: int, seed: int, *, split: str = "test"
) -> tuple[PromptSet, PromptSet, Tensor]:
    """IOI desideratum pairs for the organisms: (base set, source set, target token ids), aligned by row.

    Base and source share template, place and object (so they tokenise to one length). "io_name": the source
    has two other names in the same order; target = the source's IO. "io_position": the source has two other
    names in the flipped order (ABBA <-> BABA); target = the base's S, the base name standing where the
    source's IO stands.
    """
    from interp.tasks import ioi
    from interp.tasks.encode import Pair, Sample, build_prompt_set, check_choice, in_split, render
    from interp.tasks.words import IOI_OBJECTS, IOI_TEMPLATES, NAMES, PLACES

    check_choice("IOI desideratum", kind, IOI_DESIDERATA)
    rng = random.Random(seed)

    def sample(tpl: str, io: str, s: str, abba: bool, place: str, obj: str) -> Sample:
        values = {"A": io if abba else s, "B": s if abba else io, "S": s, "PLACE": place, "OBJECT": obj}
        text, spans = render(tpl, values)
        io_slot, s_slot = ("A", "B") if abba else ("B", "A")
        return Sample(
            prompt=text,
            answer=io,
            spans={"IO": spans[io_slot][0], "S1": spans[s_slot][0], "S2": spans["S"][0]},
            meta={"IO": io, "S": s, "order": "ABBA" if abba else "BABA", "desideratum": kind},
        )

    base_pairs, source_pairs = [], []
    for _ in range(n):
        tid = rng.randrange(len(IOI_TEMPLATES))
        while True:
            io, s = rng.sample(NAMES, 2)
            if in_split(ioi.pair_key(io, s), split):
                break
        x, y = rng.sample([m for m in NAMES if m not in (io, s)], 2)
        abba = rng.random() < 0.5
        place, obj = rng.choice(PLACES), rng.choice(IOI_OBJECTS)
        b = sample(IOI_TEMPLATES[tid], io, s, abba, place, obj)
        src = sample(IOI_TEMPLATES[tid], x, y, abba if kind == "io_name" else not abba, place, obj)
        target = x if kind == "io_name" else s
        b = Sample(
            prompt=b.prompt, answer=b.answer, spans=b.spans, meta=b.meta | {"template": tid, "target": target}
        )
        base_pairs.append([Pair(clean=b, corrupt_prompt=src.prompt, wrong=target)])
        source_pairs.append([Pair(clean=src, corrupt_prompt=b.prompt, wrong=io)])
    name = f"ioi/{kind}"
    base_set = build_prompt_set(name, tokenizer, iter(base_pairs), n=n)
    source_set = build_prompt_set(name, tokenizer, iter(source_pairs), n=n)
    return base_set, source_set, base_set.wrong_ids.clone()
