"""Sample embeddings for data selection (MoNA, Ma et al. 2025, Eqs. 6-7): the mean SAE activation over a sample's tokens.

`encode_texts` runs the model only up to the SAE's hook (TransformerLens `stop_at_layer`), TopK-encodes every token,
averages over the real tokens of each sample (padding excluded, so a sample's embedding does not depend on its
batch) and keeps the result sparse: `SparseEmbeddings`, CSR-like (offsets, indices, values). Batches group samples
of similar length. `encode_dataset` does the same in shards written atomically to a folder: an interrupted run
resumes at the first missing shard, and under `torchrun` rank r encodes shards r, r+W, ... and rank 0 merges.

    torchrun --nproc_per_node 2 -m interp.selection.features --model organism/base --sae sae/base-resid-L2 \
        --texts pool.jsonl --out encoded/
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.files import atomic_save_safetensors, atomic_write_json
from interp.selection.sae import SparseCoder, load_sae
from interp.sites import Site

MERGED = "embeddings.safetensors"
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodeConfig:
    """How texts become token batches and how token activations are pooled."""

    batch_size: int = 32  # texts per forward
    max_tokens: int | None = None  # cap on padded tokens per forward
    max_length: int | None = None  # tokens kept per text (default: the model's n_ctx)
    prepend_bos: bool = True
    pool_bos: bool = True  # count the BOS token in the mean (MoNA: every token of the formatted sample)
    sae_tokens: int = 8192  # tokens per SAE encode call: bounds the [tokens, d_sae] pre-activations in memory

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.sae_tokens < 1:
            raise ValueError(
                f"batch_size and sae_tokens must be >= 1, got {self.batch_size}, {self.sae_tokens}"
            )

    def with_(self, **overrides: Any) -> EncodeConfig:
        return dataclasses.replace(self, **overrides) if overrides else self

    @property
    def result_keys(self) -> dict[str, Any]:
        """The options that change the embeddings (batching does not)."""
        return {"max_length": self.max_length, "prepend_bos": self.prepend_bos, "pool_bos": self.pool_bos}


# ------------------------------------------------------------------------------------------ storage
@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SparseEmbeddings:
    """N sparse non-negative vectors of width `d_sae`, stored CSR-like.

    Row i's non-zero features are `indices[offsets[i]:offsets[i+1]]` with `values[...]` at the same places
    (indices ascending within a row). Nothing here is ever densified to [N, d_sae].
    """

    offsets: Int[Tensor, " n_plus_1"]
    indices: Int[Tensor, " nnz"]
    values: Float[Tensor, " nnz"]
    d_sae: int

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or int(self.offsets[0]) != 0:
            raise ValueError("offsets must be a 1-D tensor starting at 0")
        if int(self.offsets[-1]) != len(self.indices) or self.indices.shape != self.values.shape:
            raise ValueError(
                f"offsets end at {int(self.offsets[-1])} but there are {len(self.indices)} indices and "
                f"{len(self.values)} values"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def counts(self) -> Int[Tensor, " n"]:
        """Non-zeros per row."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def row_ids(self) -> Int[Tensor, " nnz"]:
        """The row of every stored entry."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.device), self.counts)

    def row_sum(self, x: Float[Tensor, " nnz"] | None = None) -> Float[Tensor, " n"]:
        """Per-row sums of `x` (one value per stored entry; default: the values)."""
        x = self.values if x is None else x
        if len(self) == 0:
            return x.new_zeros(0)
        return torch.segment_reduce(x, "sum", offsets=self.offsets, unsafe=True)

    def to(self, device: str | torch.device) -> SparseEmbeddings:
        return dataclasses.replace(
            self,
            offsets=self.offsets.to(device),
            indices=self.indices.to(device),
            values=self.values.to(device),
        )

    @classmethod
    def from_dense(cls, x: Float[Tensor, "n d_sae"]) -> SparseEmbeddings:
        """The non-zeros of a dense [n, d_sae] tensor."""
        rows, cols = x.nonzero(as_tuple=True)  # row-major: rows ascending, then columns
        counts = torch.bincount(rows, minlength=x.shape[0])
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return cls(
            offsets=offsets, indices=cols.to(torch.int32), values=x[rows, cols].float(), d_sae=x.shape[1]
        )

    def to_dense(self) -> Float[Tensor, "n d_sae"]:
        """The dense [n, d_sae] matrix (small sets and tests only)."""
        out = torch.zeros(len(self), self.d_sae, dtype=self.values.dtype, device=self.device)
        out[self.row_ids, self.indices.long()] = self.values
        return out

    def subset(self, rows: Sequence[int] | Tensor) -> SparseEmbeddings:
        """Rows `rows`, in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device).reshape(-1)
        counts = self.counts[rows]
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        starts = torch.repeat_interleave(self.offsets[rows], counts)
        within = torch.arange(int(offsets[-1]), device=self.device) - torch.repeat_interleave(
            offsets[:-1], counts
        )
        take = starts + within
        return SparseEmbeddings(
            offsets=offsets, indices=self.indices[take], values=self.values[take], d_sae=self.d_sae
        )

    @classmethod
    def concat(cls, parts: Sequence[SparseEmbeddings]) -> SparseEmbeddings:
        """The rows of `parts`, one after the other."""
        if not parts:
            raise ValueError("concat needs at least one SparseEmbeddings")
        if len({p.d_sae for p in parts}) != 1:
            raise ValueError(
                f"cannot concatenate embeddings of different widths {sorted({p.d_sae for p in parts})}"
            )
        shift = torch.tensor([0] + [p.nnz for p in parts[:-1]]).cumsum(0).tolist()
        offsets = torch.cat(
            [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shift, strict=True)]
        )
        return cls(
            offsets=offsets,
            indices=torch.cat([p.indices for p in parts]),
            values=torch.cat([p.values for p in parts]),
            d_sae=parts[0].d_sae,
        )

    def mean(self, rows: Sequence[int] | Tensor | None = None) -> Float[Tensor, " d_sae"]:
        """The dense mean of the rows (all, or `rows`): MoNA's task prototype (Eq. 8)."""
        sub = self if rows is None else self.subset(rows)
        if len(sub) == 0:
            raise ValueError("the mean of no rows is undefined: the target set is empty")
        out = torch.zeros(self.d_sae, dtype=sub.values.dtype, device=sub.device)
        return out.index_add_(0, sub.indices.long(), sub.values) / len(sub)

    def save(self, path: str | Path) -> Path:
        """Write to a safetensors file atomically."""
        tensors = {"offsets": self.offsets, "indices": self.indices, "values": self.values}
        return atomic_save_safetensors(path, tensors, metadata={"d_sae": str(self.d_sae)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SparseEmbeddings:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            d_sae = int(f.metadata()["d_sae"])
            return cls(
                offsets=f.get_tensor("offsets"),
                indices=f.get_tensor("indices"),
                values=f.get_tensor("values"),
                d_sae=d_sae,
            )


# ------------------------------------------------------------------------------------------ batching
def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], *, prepend_bos: bool = True, max_length: int | None = None
) -> list[list[int]]:
    """Token ids of each text (BOS first when the tokenizer has one), cut to `max_length` tokens."""
    bos = tokenizer.bos_token_id if prepend_bos else None
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = ([bos] if bos is not None else []) + ids
        if not ids:
            raise ValueError(
                f"texts[{i}] is empty and the tokenizer has no BOS token: it has no tokens to encode"
            )
        rows.append(ids[:max_length] if max_length else ids)
    return rows


def length_batches(
    lengths: Sequence[int], *, batch_size: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted by (length, index)), each at most `batch_size`
    rows and, when given, `max_tokens` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted by length: row i is the longest of the batch it would join
        if current and (
            len(current) >= batch_size or (max_tokens and lengths[i] * (len(current) + 1) > max_tokens)
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def site_activations(
    model: Any, site: Site, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos width"]:
    """The activation at `site`, one vector per token (heads concatenated for z).

    On the TransformerLens backend the forward stops right after the block that holds `site` (`stop_at_layer`);
    `resid_pre` of block L stops before block L. Other backends run the whole model through `run_with_cache`.
    """
    if getattr(model, "backend", None) == "tl":
        if site.component == "resid_pre":  # the residual entering block L is what blocks < L return
            act = model.tl(tokens, attention_mask=attention_mask, stop_at_layer=site.layer)
        else:
            captured: dict[str, Tensor] = {}

            def save(act: Tensor, hook: Any) -> None:
                captured["act"] = act

            stop = {"embed": 0, "pos_embed": 0, "resid_final": None}.get(
                site.component, (site.layer or 0) + 1
            )
            model.tl.run_with_hooks(
                tokens,
                attention_mask=attention_mask,
                stop_at_layer=stop,
                return_type=None,
                fwd_hooks=[(site.hook_name, save)],
            )
            act = captured["act"]
    else:
        _, cache = model.run_with_cache(tokens, [site], attention_mask=attention_mask)
        act = cache[site.hook_name]
    return (
        act.flatten(2) if act.ndim == 4 else act
    )  # z: [batch, pos, head, d_head] -> [batch, pos, head*d_head]


def _site_batches(
    model: Any, site: Site, texts: Sequence[str], cfg: EncodeConfig
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """(original indices, activations [b, pos, width], float mask [b, pos]) for length-grouped batches."""
    rows = tokenize_texts(
        model.tokenizer, texts, prepend_bos=cfg.prepend_bos, max_length=cfg.max_length or model.cfg.n_ctx
    )
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    skip_first = cfg.prepend_bos and not cfg.pool_bos and tok.bos_token_id is not None
    for idx in length_batches([len(r) for r in rows], batch_size=cfg.batch_size, max_tokens=cfg.max_tokens):
        ids, mask = _pad([rows[i] for i in idx], pad, model.device)
        acts = site_activations(model, site, ids, mask)
        weights = mask.to(torch.float32)
        if skip_first:
            weights[:, 0] = 0.0
        yield idx, acts, weights


def _check_inputs(texts: Sequence[str], what: str = "texts") -> None:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    if len(texts) == 0:
        raise ValueError(f"{what} is empty: nothing to encode")


def pool_tokens(
    values: Float[Tensor, "batch pos k"],
    indices: Int[Tensor, "batch pos k"],
    mask: Float[Tensor, "batch pos"],
    d_sae: int,
) -> Float[Tensor, "batch d_sae"]:
    """The mean over each sample's real tokens of its sparse token activations (MoNA Eq. 7)."""
    b = values.shape[0]
    weighted = (values * mask[..., None]).reshape(b, -1)  # (b, pos*k); pads weigh 0
    pooled = torch.zeros(b, d_sae, dtype=values.dtype, device=values.device)
    pooled.scatter_add_(1, indices.reshape(b, -1), weighted)
    return pooled / mask.sum(1, keepdim=True).clamp(min=1)


@torch.no_grad()
def encode_texts(
    model: Any, sae: SparseCoder, texts: Sequence[str], config: EncodeConfig | None = None, **options: Any
) -> SparseEmbeddings:
    """MoNA sample embeddings: mean over each text's tokens of TopK SAE activations at the SAE's hook.

    Runs `model` only up to that hook, on its device, in length-grouped batches; rows come back in the order of
    `texts`. `options` override fields of `config` (`EncodeConfig`: batch_size, max_tokens, max_length,
    prepend_bos, pool_bos). Raises before any forward if the SAE does not fit the model or `texts` is empty.
    """
    cfg = (config or EncodeConfig()).with_(**options)
    site = sae.check_model(model)
    _check_inputs(texts)
    sae = sae.to(model.device)
    parts, order = [], []
    for idx, acts, mask in _site_batches(model, site, texts, cfg):
        rows = max(1, cfg.sae_tokens // acts.shape[1])  # samples per SAE call
        for r in range(0, len(idx), rows):
            values, indices = sae.encode_topk(acts[r : r + rows])
            pooled = pool_tokens(values.float(), indices, mask[r : r + rows], sae.d_sae)
            parts.append(SparseEmbeddings.from_dense(pooled).to("cpu"))
        order += idx
    merged = SparseEmbeddings.concat(parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return merged.subset(inverse)


@torch.no_grad()
def mean_activations(
    model: Any, site: Site | str, texts: Sequence[str], config: EncodeConfig | None = None, **options: Any
) -> Float[Tensor, "n width"]:
    """The mean raw activation at `site` over each text's real tokens (MoNA's "w/o SAE" ablation), on CPU."""
    from interp.sites import as_site

    cfg = (config or EncodeConfig()).with_(**options)
    site = model.check_site(as_site(site))
    _check_inputs(texts)
    out: Tensor | None = None
    for idx, acts, mask in _site_batches(model, site, texts, cfg):  # type: ignore[arg-type]
        pooled = (acts.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        if out is None:
            out = torch.zeros(len(texts), pooled.shape[-1])
        out[torch.tensor(idx)] = pooled.cpu()
    assert out is not None
    return out


# ------------------------------------------------------------------------------------------ shards
def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, or (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, nccl on GPU).

    Returns (rank, world size, this rank's device). Without torchrun's variables: (0, 1, cuda or cpu).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world = dist_info()
    return rank, world, device


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"shard-{shard:05d}.safetensors"


def encode_dataset(
    model: Any,
    sae: SparseCoder,
    texts: Sequence[str],
    out_dir: str | Path,
    config: EncodeConfig | None = None,
    *,
    shard_size: int = 4096,
    **options: Any,
) -> SparseEmbeddings:
    """`encode_texts` over a dataset in shards of `shard_size` texts, resumable and data-parallel.

    Each shard is written atomically to `out_dir/shard-NNNNN.safetensors`; shards already there are skipped, so an
    interrupted run resumes at the first missing one. Under torch.distributed (e.g. `torchrun`), rank r encodes
    shards r, r+W, ...; after a barrier rank 0 merges them into `out_dir/embeddings.safetensors`, and every rank
    returns the merged embeddings. `out_dir/manifest.json` ties the folder to these texts and this SAE.
    """
    cfg = (config or EncodeConfig()).with_(**options)
    sae.check_model(model)
    _check_inputs(texts)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = dist_info()
    n_shards = -(-len(texts) // shard_size)
    manifest = {
        "n_texts": len(texts),
        "shard_size": shard_size,
        "n_shards": n_shards,
        "texts_sha256": _fingerprint(texts),
        "sae": sae.name,
        "hook_name": sae.hook_name,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "model": getattr(model, "name", "?"),
        **cfg.result_keys,
    }
    mpath = out / MANIFEST
    if mpath.exists():
        old = json.loads(mpath.read_text())
        changed = sorted(k for k in manifest if old.get(k) != manifest[k])
        if changed:
            raise ValueError(
                f"{out} holds an encoding of other inputs ({', '.join(changed)} differ); use another "
                "folder or delete it"
            )
    elif rank == 0:
        atomic_write_json(mpath, manifest)
    merged = out / MERGED
    if not merged.exists():
        for shard in range(rank, n_shards, world):
            path = shard_path(out, shard)
            if path.exists():
                continue
            chunk = texts[shard * shard_size : (shard + 1) * shard_size]
            emb = encode_texts(model, sae, chunk, cfg)
            emb.save(path)
        _barrier()
        if rank == 0:
            missing = [s for s in range(n_shards) if not shard_path(out, s).exists()]
            if missing:
                raise RuntimeError(f"shards {missing[:5]}... of {out} are missing after every rank finished")
            SparseEmbeddings.concat(
                [SparseEmbeddings.load(shard_path(out, s)) for s in range(n_shards)]
            ).save(merged)
        _barrier()
    return SparseEmbeddings.load(merged)


# ------------------------------------------------------------------------------------------ CLI
def read_texts(path: str | Path, *, key: str = "text") -> list[str]:
    """Texts from a .jsonl file (field `key` of each line) or a .txt file (one per line)."""
    path = Path(path)
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        return [json.loads(ln)[key] for ln in lines]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Encode a text file with a model and an SAE into a shard folder (one process, or one rank of torchrun)."""
    p = argparse.ArgumentParser(prog="python -m interp.selection.features", description=main.__doc__)
    p.add_argument("--model", required=True, help="hub id, local checkpoint folder or organism name")
    p.add_argument("--sae", required=True, help="zoo name, local SAE folder, sae-lens release or hub repo")
    p.add_argument("--sae-id", default=None, help="SAE id within a release / folder within a hub repo")
    p.add_argument("--texts", required=True, help=".jsonl (field --text-key) or .txt (one text per line)")
    p.add_argument("--text-key", default="text")
    p.add_argument("--out", required=True, help="shard folder (resumable)")
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--skip-bos", action="store_true", help="leave the BOS token out of each sample's mean")
    args = p.parse_args(argv)

    from interp.models import load_model

    rank, world, device = init_distributed()
    texts = read_texts(args.texts, key=args.text_key)
    model = load_model(args.model, backend="tl", device=device, dtype=args.dtype)
    sae = load_sae(args.sae, sae_id=args.sae_id, device=device)
    emb = encode_dataset(
        model,
        sae,
        texts,
        args.out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        pool_bos=not args.skip_bos,
    )
    if rank == 0:
        print(
            f"encoded {len(emb)} texts ({emb.nnz} non-zeros, d_sae={emb.d_sae}) on {world} rank(s) into {args.out}"
        )
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
