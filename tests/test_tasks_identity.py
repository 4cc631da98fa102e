"""The organisms' prompt sets and training text stay identical: digests of the generators' output.

The digests below were computed from commit 796c87d (before the generators learnt per-tokenizer word lists and
resampling) with the organisms' word-level tokenizer. They pin identity, not correctness: every experiment's
results depend on exactly these prompts and this training text. If a digest changes, the change altered what
the organisms see; that needs its own decision, not an updated number.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path

import pytest

from interp.tasks import PromptSet, desiderata, make

ORGANISM = Path(__file__).resolve().parents[1] / "interp" / "zoo" / "organisms" / "base"

# (task, options, seed) -> digest of make(task, <organism tokenizer>, n=64, seed=seed, **options)
MAKE_DIGESTS = {
    ("ioi", (), 0): "6afccf8bcf0723ac",
    ("ioi", (), 1): "7adbfe11ecdaf526",
    ("ioi", (("variant", "hard"),), 0): "cc41f4b0daea2484",
    ("ioi", (("variant", "hard"),), 1): "d1827f62fe8823df",
    ("ioi", (("order", "ABBA"), ("template", 4)), 0): "41ab16831315df01",
    ("ioi", (("order", "ABBA"), ("template", 4)), 1): "61d00397aa4465fe",
    ("ioi", (("same_length", True),), 0): "74d78b875beab280",
    ("ioi", (("same_length", True),), 1): "17e89410d40db7ee",
    ("colored_objects", (), 0): "063cbeb000f36a10",
    ("colored_objects", (), 1): "6eebfa6edb0ee009",
    ("entity_tracking", (("n_boxes", 2),), 0): "12b4d06ac3e137e3",
    ("entity_tracking", (("n_boxes", 2),), 1): "d7cf3ec932f8e248",
    ("entity_tracking", (), 0): "09f4915c8e4234ec",
    ("entity_tracking", (), 1): "561771c2c4bd1acc",
    ("entity_tracking", (("n_boxes", 7),), 0): "40f973b6d84c0a4f",
    ("entity_tracking", (("n_boxes", 7),), 1): "093f5ce179788a03",
    ("context_prior", (), 0): "c577e35d6246d2d7",
    ("context_prior", (), 1): "a75adb12aba03254",
    ("context_prior", (("format", "weight"),), 0): "2d9b523bcf47656c",
    ("context_prior", (("format", "weight"),), 1): "5f7191b363c9978e",
    ("context_prior", (("format", "none"), ("split", "all")), 0): "aad6d6de78d9438a",
    ("context_prior", (("format", "none"), ("split", "all")), 1): "022cce34307eefb8",
    ("chat", (), 0): "b41e65e0428565f7",
    ("chat", (), 1): "3a6cb829cf0c59ea",
}
# DCM desiderata(<organism tokenizer>, kind, n=32, seed=0)
DESIDERATA_DIGESTS = {
    "positional": "ff2630d371400346",
    "object_value": "3873651b3d261e74",
    "box_label_value": "266a7d4d14790f38",
}
# 300 examples of each corpus source from random.Random(0); "mix": 1000 examples of BASE_MIX
CORPUS_DIGESTS = {
    "ioi": "e4a89424ebfba604",
    "ioi_hard": "0ac7bf75c9824a2c",
    "entity_tracking": "c71f61262764ff5a",
    "colored_objects": "23c3e3e3dab8b14b",
    "context_prior": "8a1b6a0db6e6c9b6",
    "facts": "a25183320301982f",
    "filler": "59402a1190b41fc4",
    "repeat": "c80fb9534fbdd2c2",
    "chat": "4cc54142f80c1653",
    "chat_refusal": "2ca9fd5de4410a23",
    "mix": "6a55e39ffd033b8e",
}


def _record(ps: PromptSet) -> dict:
    return {
        "name": ps.name,
        "clean": ps.clean.tolist(),
        "corrupt": ps.corrupt.tolist(),
        "mask": ps.attention_mask.tolist(),
        "answer": ps.answer_ids.tolist(),
        "wrong": ps.wrong_ids.tolist(),
        "end": ps.end.tolist(),
        # positions added after the pin (Colored Objects' other_color_<k>) are new, not changed
        "positions": {
            k: v.tolist() for k, v in sorted(ps.positions.items()) if not k.startswith("other_color_")
        },
        "prompts": ps.prompts,
        "corrupt_prompts": ps.corrupt_prompts,
        "metadata": ps.metadata,
        "options": None if ps.options is None else ps.options.tolist(),
        "pad": ps.pad_id,
    }


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def organism_tokenizer():
    from transformers import AutoTokenizer

    if not (ORGANISM / "tokenizer.json").is_file():
        pytest.skip(f"the organisms' tokenizer is not built at {ORGANISM}")
    return AutoTokenizer.from_pretrained(str(ORGANISM))


@pytest.mark.parametrize(("name", "options", "seed"), list(MAKE_DIGESTS))
def test_prompt_sets_identical(organism_tokenizer, name, options, seed):
    ps = make(name, organism_tokenizer, n=64, seed=seed, **dict(options))
    assert _digest(_record(ps)) == MAKE_DIGESTS[name, options, seed]


@pytest.mark.parametrize("kind", list(DESIDERATA_DIGESTS))
def test_desiderata_identical(organism_tokenizer, kind):
    base, source, target = desiderata(organism_tokenizer, kind, n=32, seed=0)
    assert _digest([_record(base), _record(source), target.tolist()]) == DESIDERATA_DIGESTS[kind]


def test_training_corpus_identical():
    from interp.zoo.corpus import BASE_MIX, SOURCES, Mixture

    got = {}
    for name, source in SOURCES.items():
        rng = random.Random(0)
        got[name] = _digest([asdict(source(rng)) for _ in range(300)])
    rng = random.Random(0)
    got["mix"] = _digest([asdict(Mixture(BASE_MIX).sample(rng)) for _ in range(1000)])
    # sources added after the pin (the RoPE family's curriculum) are new, not changed
    assert {k: got[k] for k in CORPUS_DIGESTS} == CORPUS_DIGESTS
