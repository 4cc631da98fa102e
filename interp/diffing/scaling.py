"""Latent Scaling (Minder et al. 2025, "Overcoming sparsity artifacts in crosscoders to interpret chat-tuning").

A latent that the decoder norms call fine-tune-only may still be present in the base model: the L1 / BatchTopK
sparsity lets a crosscoder drop its base decoder ("complete shrinkage") or split it off ("latent decoupling").
Latent Scaling fits, per latent j with fine-tune decoder vector d_j, the scalar beta that best explains a target
y_i as beta f_ij d_j in least squares, in closed form:

    beta_j = d_j . sum_i f_ij y_ij / (|d_j|^2 sum_i f_ij^2)

for four targets: each model's reconstruction error with latent j's own contribution added back ("error") and
each model's reconstruction ("reconstruction"). The ratios nu_j = beta_base / beta_ft (error and reconstruction)
are near 0 for latents the base model really lacks and near 1 for artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp.diffing.crosscoder import Crosscoder

TARGETS = ("ft_error", "base_error", "ft_reconstruction", "base_reconstruction")


def closed_form_beta(
    vectors: Float[Tensor, "m d"], f: Float[Tensor, "n m"], targets: Float[Tensor, "n m d"]
) -> Float[Tensor, " m"]:
    """argmin_beta sum_i |y_ij - beta_j f_ij v_j|^2 for each j (targets may differ per latent: [n, m, d])."""
    num = torch.einsum("md,nm,nmd->m", vectors, f, targets)
    den = vectors.pow(2).sum(-1) * f.pow(2).sum(0)
    return num / den


@dataclass(frozen=True, kw_only=True)
class LatentScaling:
    """Latent Scaling of `latents`: beta per target (`TARGETS`), the ratios nu, and how often each fired."""

    latents: Tensor
    beta: dict[str, Tensor]
    count: Tensor

    @property
    def nu_error(self) -> Tensor:
        return self.beta["base_error"] / self.beta["ft_error"]

    @property
    def nu_reconstruction(self) -> Tensor:
        return self.beta["base_reconstruction"] / self.beta["ft_reconstruction"]

    def confirmed(self, max_ratio: float = 0.5) -> Tensor:
        """The latents that fired and whose nu_error and nu_reconstruction are both below `max_ratio`."""
        ok = (self.count > 0) & (self.nu_error < max_ratio) & (self.nu_reconstruction < max_ratio)
        return self.latents[ok.cpu()]

    def to_frame(self):
        import pandas as pd

        data = {"latent": self.latents.tolist(), "count": self.count.tolist()}
        data |= {f"beta_{k}": v.tolist() for k, v in self.beta.items()}
        data |= {"nu_error": self.nu_error.tolist(), "nu_reconstruction": self.nu_reconstruction.tolist()}
        return pd.DataFrame(data)


@torch.no_grad()
def latent_scaling(
    cc: Crosscoder,
    acts: Float[Tensor, "n 2 d"],
    latents: Sequence[int] | Tensor,
    *,
    batch_size: int = 4096,
) -> LatentScaling:
    """Latent Scaling of `latents` of crosscoder `cc` over paired activations `acts` (model units, streamed).

    All betas use the latent's fine-tune decoder vector (model units). Error targets add the latent's own
    contribution back to each model's reconstruction error; the sums are accumulated without materialising
    one target per latent.
    """
    if cc.n_models != 2:
        raise ValueError("Latent Scaling needs a crosscoder of two models")
    idx = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
    dev = cc.W_enc.device
    idx_d = idx.to(dev)
    dec = cc.W_dec[:, idx_d] * cc.scale[:, None, None]  # (2, m, d) model units
    v = dec[1]  # the fine-tune decoder vectors (m, d)
    m = len(idx)
    num = {t: torch.zeros(m, dtype=torch.float64, device=dev) for t in TARGETS}
    f2 = torch.zeros(m, dtype=torch.float64, device=dev)
    count = torch.zeros(m, dtype=torch.long, device=dev)
    vv = (v * v).sum(-1).double()
    for i in range(0, len(acts), batch_size):
        x = acts[i : i + batch_size].to(dev, cc.W_enc.dtype)
        f_all = cc.encode(x)
        x_hat = cc.decode(f_all)
        err = x - x_hat  # (n, 2, d)
        f = f_all[:, idx_d].double()  # (n, m)
        f2 += (f * f).sum(0)
        count += (f > 0).sum(0)
        for mi, name in ((1, "ft"), (0, "base")):
            # error target y_ij = e_i + f_ij dec[mi, j]:  v_j . sum_i f_ij y_ij = sum_i f_ij (v_j . e_i) + (v_j . dec_j) sum f_ij^2
            ve = err[:, mi].double() @ v.double().T  # (n, m)
            num[f"{name}_error"] += (f * ve).sum(0) + (f * f).sum(0) * (v.double() * dec[mi].double()).sum(-1)
            num[f"{name}_reconstruction"] += (f * (x_hat[:, mi].double() @ v.double().T)).sum(0)
    den = vv * f2
    beta = {t: (num[t] / den).float().cpu() for t in TARGETS}
    return LatentScaling(latents=idx, beta=beta, count=count.cpu())
