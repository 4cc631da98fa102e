"""TopK SAEs on an organism's residual stream (sae-lens `TopKSAE`, trained here by a plain torch loop).

Activations are `blocks.{L}.hook_resid_pre` of the organism (the input of block L; HF `hidden_states[L]`),
collected on the organism's pre-training mixture at every real token except BOS (whose norm is an outlier).
Training: MSE reconstruction plus the AuxK loss of Gao et al. (2024, "Scaling and evaluating sparse
autoencoders") on latents that have not fired for `dead_after` tokens; decoder rows kept at unit norm.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp.zoo.corpus import Mixture
from interp.zoo.train import Tokenise


@dataclass(frozen=True, kw_only=True)
class SAERecipe:
    """One SAE: which organism and layer, its width and k, and how it is trained."""

    name: str
    organism: str
    layer: int
    d_sae: int = 512
    k: int = 16
    n_train_docs: int = 12_000  # documents of the organism's mixture (~300k activations)
    n_eval_docs: int = 1_000  # held-out documents (another seed) for FVE and dead latents
    n_check_docs: int = 200  # the first held-out documents, for the card's quick re-check (tests)
    steps: int = 3000
    batch_size: int = 512
    lr: float = 2e-3
    aux_k: int = 64
    aux_coef: float = 1 / 32
    dead_after: int = 100_000  # tokens without firing after which a latent counts as dead for AuxK
    seed: int = 0
    data_seed: int = 101
    eval_seed: int = 202

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    def to_dict(self) -> dict:
        return {**asdict(self), "hook_name": self.hook_name}


@torch.no_grad()
def resid_activations(
    model, tok, mixture: Mixture, layer: int, n_docs: int, seed: int
) -> Float[Tensor, "n d_model"]:
    """`blocks.{layer}.hook_resid_pre` at every real non-BOS token of `n_docs` documents of `mixture`."""
    rng = random.Random(seed)
    tokenise = Tokenise(
        tok,
        model.config.max_position_embeddings
        if hasattr(model.config, "max_position_embeddings")
        else model.config.n_positions,
    )
    rows = sorted((tokenise(mixture.sample(rng))[0] for _ in range(n_docs)), key=len)
    out = []
    for i in range(0, len(rows), 128):
        chunk = rows[i : i + 128]
        width = max(map(len, chunk))
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in chunk])
        real = torch.tensor([[0] + [1] * (len(r) - 1) + [0] * (width - len(r)) for r in chunk]).bool()
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer]  # (B, T, d_model)
        out.append(hidden[real])
    return torch.cat(out).float()


@torch.no_grad()
def sae_stats(sae, acts: Float[Tensor, "n d_in"], batch_size: int = 4096) -> dict[str, float]:
    """Fraction of variance explained, mean L0 and the fraction of latents that never fire on `acts`."""
    err, fired, l0 = 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 0.0
    for i in range(0, acts.shape[0], batch_size):
        x = acts[i : i + batch_size]
        z = sae.encode(x)
        err += float(((sae.decode(z) - x) ** 2).sum())
        fired |= (z > 0).any(0)
        l0 += float((z > 0).sum())
    total = float(((acts - acts.mean(0)) ** 2).sum())
    return {
        "fve": round(1 - err / total, 6),
        "dead_fraction": round(1 - float(fired.float().mean()), 6),
        "l0": round(l0 / acts.shape[0], 4),
        "n_eval_tokens": int(acts.shape[0]),
    }


def check_stats(sae, model, tok, mixture: Mixture, recipe: SAERecipe) -> dict:
    """The card's quick re-check: `sae_stats` on the first `n_check_docs` held-out documents."""
    acts = resid_activations(model, tok, mixture, recipe.layer, recipe.n_check_docs, recipe.eval_seed)
    return {"n_docs": recipe.n_check_docs, "scores": sae_stats(sae, acts)}


def _normalise_decoder(sae) -> None:
    with torch.no_grad():
        sae.W_dec.data /= sae.W_dec.data.norm(dim=-1, keepdim=True)


def train_sae(recipe: SAERecipe, acts: Float[Tensor, "n d_in"], log=print):
    """A sae-lens `TopKSAE` trained on `acts` with MSE + AuxK (plain torch loop, seeded)."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(recipe.seed)
    cfg = TopKSAEConfig(d_in=acts.shape[1], d_sae=recipe.d_sae, k=recipe.k, apply_b_dec_to_input=True)
    cfg.metadata.model_name = recipe.organism
    cfg.metadata.hook_name = recipe.hook_name
    cfg.metadata.hook_head_index = None
    cfg.metadata.prepend_bos = True
    cfg.metadata.context_size = 128
    sae = TopKSAE(cfg)
    with torch.no_grad():
        _normalise_decoder(sae)
        sae.W_enc.data = sae.W_dec.data.T.clone().contiguous()
        sae.b_dec.data = acts.median(0).values  # a cheap stand-in for the geometric median
    opt = torch.optim.Adam(sae.parameters(), lr=recipe.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(recipe.d_sae)
    gen = torch.Generator().manual_seed(recipe.seed)
    scale = float(((acts - acts.mean(0)) ** 2).sum(1).mean())  # normalises the MSE to FVE units
    for step in range(recipe.steps):
        for g in opt.param_groups:  # linear decay over the last 20%
            g["lr"] = recipe.lr * min(1.0, 5 * (1 - step / recipe.steps))
        x = acts[torch.randint(acts.shape[0], (recipe.batch_size,), generator=gen)]
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # (B, d_sae)
        z = sae.activation_fn(pre)
        recon = z @ sae.W_dec + sae.b_dec
        mse = ((recon - x) ** 2).sum(1).mean() / scale
        since_fired += recipe.batch_size
        since_fired[(z > 0).any(0)] = 0
        dead = since_fired > recipe.dead_after
        aux = torch.zeros(())
        if dead.any():
            k_aux = min(recipe.aux_k, int(dead.sum()))
            dead_pre = pre.masked_fill(~dead, float("-inf"))
            vals, idx = dead_pre.topk(k_aux, dim=-1)
            z_aux = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
            residual = (x - recon).detach()
            aux = ((z_aux @ sae.W_dec - residual) ** 2).sum(1).mean() / scale
        loss = mse + recipe.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _normalise_decoder(sae)
        if (step + 1) % 500 == 0:
            log(f"sae step {step + 1} mse/var {mse.item():.4f} aux {aux.item():.4f} dead {int(dead.sum())}")
    return sae.eval()


def build_sae(recipe: SAERecipe, model, tok, mixture: Mixture, log=print) -> tuple[object, dict]:
    """Collect activations of `model` on `mixture`, train the SAE, measure it on held-out documents.

    Returns the sae-lens `TopKSAE` and its card (without target checks).
    """
    t0 = time.time()
    acts = resid_activations(model, tok, mixture, recipe.layer, recipe.n_train_docs, recipe.data_seed)
    held_out = resid_activations(model, tok, mixture, recipe.layer, recipe.n_eval_docs, recipe.eval_seed)
    log(f"{acts.shape[0]:,} training activations, {held_out.shape[0]:,} held-out")
    sae = train_sae(recipe, acts, log=log)
    trained_on = _trained_on(model, recipe.organism)
    sae.cfg.metadata.model_weights_sha256 = trained_on["weights_sha256"]  # the folder names its model alone
    card = {
        "name": recipe.name,
        "organism": recipe.organism,
        "hook_name": recipe.hook_name,
        "architecture": "topk",
        "d_in": sae.cfg.d_in,
        "d_sae": recipe.d_sae,
        "k": recipe.k,
        "n_train_tokens": int(acts.shape[0]),
        "scores": sae_stats(sae, held_out),
        "check": check_stats(sae, model, tok, mixture, recipe),
        "recipe": recipe.to_dict(),
        "trained_on": trained_on,
        "build_time_s": round(time.time() - t0, 1),
    }
    return sae, card


def _trained_on(model, organism: str) -> dict:
    """The organism's identity (name and weights hash of the folder `model` was loaded from)."""
    from pathlib import Path

    from interp.models.identity import weights_sha256

    folder = getattr(model.config, "_name_or_path", "")
    digest = weights_sha256(folder) if folder and Path(folder).is_dir() else None
    return {"name": organism, "weights_sha256": digest, "basis": "hf"}
