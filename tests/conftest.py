"""Shared fixtures: offline hub, fixed seeds, tiny local checkpoints built from configs."""

import os

os.environ.setdefault("INTERP_PROGRESS", "0")  # no progress bars in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TINY_WORDS = [
    "When",
    "Mary",
    "and",
    "John",
    "went",
    "to",
    "the",
    "store",
    ",",
    "gave",
    "a",
    "drink",
    ".",
    "Tom",
    "Anna",
    "bought",
    "ball",
    "book",
    "at",
    "park",
    "then",
    "school",
    "had",
    "fun",
    "later",
]


@pytest.fixture(scope="session")
def word_tokenizer():
    from interp.models.tokenizer import build_word_tokenizer

    return build_word_tokenizer(TINY_WORDS)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, word_tokenizer):
    """Tiny random HF checkpoints (one per architecture) saved to temp folders with a local tokenizer."""
    from interp.models.tiny import ARCHITECTURES, build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_checkpoint(arch, root / arch, word_tokenizer) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    """(tl, nnsight) model pairs per architecture, loaded once per session."""
    from interp import load_model

    cache: dict = {}

    def get(arch: str, backend: str):
        if (arch, backend) not in cache:
            cache[arch, backend] = load_model(tiny_dirs[arch], backend=backend, device="cpu")
        return cache[arch, backend]

    return get


@pytest.fixture(scope="session")
def organism_like(tmp_path_factory):
    """A tiny random GPT-2 with the organisms' word vocabulary and a perturbed twin (stand-ins for the zoo)."""
    from interp.finetuning.pair import perturbed_twin
    from interp.models.tiny import build_tiny_checkpoint
    from interp.models.tokenizer import build_word_tokenizer
    from interp.zoo.corpus import words

    root = tmp_path_factory.mktemp("organism_like")
    base = build_tiny_checkpoint("gpt2", root / "base", build_word_tokenizer(words()), n_layers=3, n_ctx=128)
    return {"base": base, "ft": perturbed_twin(base, root / "ft", scale=0.05)}
