"""A plain, seeded, deterministic CPU training loop for the organisms (AdamW, warm-up + cosine, grad clipping).

Batches are grouped by length (a chunk of examples is sorted by token count, cut into batches, and the batches
shuffled), right-padded, and trained with a loss mask: every token for pre-training text, the completion only
for fine-tune examples. Right padding needs no attention mask under a causal model (pads come after the real
tokens), and the mask keeps pads out of the loss.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from interp.zoo.corpus import Example, Mixture


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimiser and schedule of one training run."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: float = 0.05  # fraction of steps with linear warm-up
    final_lr: float = 0.1  # cosine decays to this fraction of lr
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 500
    chunk_batches: int = 16  # batches sorted by length together

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{**d, "betas": tuple(d["betas"])}) if "betas" in d else cls(**d)


@dataclass(frozen=True)
class Batch:
    input_ids: Int[Tensor, "batch pos"]
    loss_mask: Int[Tensor, "batch pos"]  # 1 where the token is a training target


def set_determinism(seed: int, threads: int = 1) -> None:
    """Seed torch and Python, fix the thread count, and ask torch for deterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


class Tokenise:
    """Example -> (ids, loss mask) with BOS first and EOS last, cached per text (the word tokenizer is pure)."""

    def __init__(self, tokenizer, max_len: int) -> None:
        self.tok, self.max_len = tokenizer, max_len
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[text] = self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        return self._cache[text]

    def __call__(self, ex: Example) -> tuple[list[int], list[int]]:
        prompt = [self.tok.bos_token_id, *self._ids(ex.prompt)]
        completion = [*self._ids(ex.completion), self.tok.eos_token_id]
        ids = (prompt + completion)[: self.max_len]
        mask = (
            [1] * len(prompt) + [1] * len(completion)
            if ex.loss == "all"
            else [0] * len(prompt) + [1] * len(completion)
        )
        mask[0] = 0  # nothing predicts BOS
        return ids, mask[: self.max_len]


def batches(mixture: Mixture, tokenise: Tokenise, cfg: TrainConfig, pad_id: int):
    """An endless, seeded stream of length-grouped, right-padded batches."""
    rng = random.Random(cfg.seed)
    while True:
        rows = [tokenise(mixture.sample(rng)) for _ in range(cfg.batch_size * cfg.chunk_batches)]
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]), i))
        chunk = [order[k : k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
        rng.shuffle(chunk)
        for idx in chunk:
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.tensor([rows[i][0] + [pad_id] * (width - len(rows[i][0])) for i in idx])
            mask = torch.tensor([rows[i][1] + [0] * (width - len(rows[i][1])) for i in idx])
            yield Batch(ids, mask)


def lr_at(step: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def masked_lm_loss(model, batch: Batch) -> Tensor:
    """Mean next-token cross-entropy over the masked-in target tokens."""
    logits = model(input_ids=batch.input_ids).logits[:, :-1]  # (B, T-1, V)
    targets = batch.input_ids[:, 1:]
    mask = batch.loss_mask[:, 1:].bool()
    return torch.nn.functional.cross_entropy(logits[mask], targets[mask])


def train(
    model,
    tokenizer,
    mixture: Mixture,
    cfg: TrainConfig,
    *,
    evaluate: Callable[[object], dict[str, float]] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train `model` in place on `mixture`; return the history (loss every 100 steps, evals every eval_every)."""
    max_len = (
        model.config.max_position_embeddings
        if hasattr(model.config, "max_position_embeddings")
        else model.config.n_positions
    )
    stream = batches(mixture, Tokenise(tokenizer, max_len), cfg, tokenizer.pad_token_id)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    history: list[dict] = []
    device = next(model.parameters()).device
    t0, running = time.time(), 0.0
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        batch = next(stream)
        loss = masked_lm_loss(model, Batch(batch.input_ids.to(device), batch.loss_mask.to(device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running += loss.item()
        if (step + 1) % 100 == 0:
            history.append({"step": step + 1, "loss": running / 100, "time_s": round(time.time() - t0, 1)})
            log(f"step {step + 1} loss {running / 100:.4f} ({time.time() - t0:.0f}s)")
            running = 0.0
        if evaluate is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            model.eval()
            scores = evaluate(model)
            model.train()
            history.append({"step": step + 1, **scores})
            log(f"step {step + 1} eval " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    model.eval()
    return history
