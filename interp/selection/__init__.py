"""Task-specific data selection with SAE features (MoNA, Ma et al. 2025, "Task-Specific Data Selection for
Instruction Tuning via Monosemantic Neuronal Activations", arXiv 2503.15573).

    sae = load_sae("sae/base-resid-L2")                     # sae-lens, zoo or sparsify-format TopK SAE
    sel = SAESelector(model, sae).select(pool, targets, ratio=0.05)
    sel.export("out/", records=pool)                        # selection.json + selected.jsonl

Pieces: `encode_texts` / `encode_dataset` (sparse mean TopK activations per sample, sharded and resumable, data
parallel under torchrun), `generalized_jaccard` / `pool_similarity`, `select_top`, and the baselines of
`interp.selection.baselines` (raw hidden states, BM25, random, dense sentence embeddings).
"""

from interp.selection.baselines import (
    METHODS,
    BM25Selector,
    DenseEmbeddingSelector,
    RandomSelector,
    RawHiddenSelector,
    SAESelector,
    Selector,
    dense_embedding_available,
    make_selector,
)
from interp.selection.features import (
    EncodeConfig,
    SparseEmbeddings,
    encode_dataset,
    encode_texts,
    mean_activations,
    pool_tokens,
)
from interp.selection.sae import (
    SAELoadError,
    SAESiteError,
    SparseCoder,
    load_sae,
    load_sparsify,
    random_topk_sae,
    save_sparsify,
)
from interp.selection.select import Selection, select_top, selection_size
from interp.selection.similarity import (
    METRICS,
    cosine,
    dense_similarity,
    generalized_jaccard,
    pool_similarity,
)

__all__ = [
    "BM25Selector",
    "DenseEmbeddingSelector",
    "EncodeConfig",
    "METHODS",
    "METRICS",
    "RandomSelector",
    "RawHiddenSelector",
    "SAELoadError",
    "SAESelector",
    "SAESiteError",
    "Selection",
    "Selector",
    "SparseCoder",
    "SparseEmbeddings",
    "cosine",
    "dense_embedding_available",
    "dense_similarity",
    "encode_dataset",
    "encode_texts",
    "generalized_jaccard",
    "load_sae",
    "load_sparsify",
    "make_selector",
    "mean_activations",
    "pool_similarity",
    "pool_tokens",
    "random_topk_sae",
    "save_sparsify",
    "select_top",
    "selection_size",
]
