"""Model identity (name + weights hash) and the provenance checks built on it: SAEs refuse other models."""

import hashlib
import json

import pytest

from interp import load_model
from interp.finetuning.pair import perturbed_twin
from interp.models.identity import (
    ModelIdentity,
    ModelMismatchError,
    check_trained_on,
    model_identity,
    weights_sha256,
)
from interp.selection.sae import SAESiteError, load_sae, random_topk_sae, save_sparsify

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def twin_dir(tiny_dirs, tmp_path_factory):
    return perturbed_twin(tiny_dirs["gpt2"], tmp_path_factory.mktemp("prov") / "twin", scale=0.01, seed=2)


def test_weights_hash_is_the_zoo_convention_and_backend_free(tiny_dirs, tiny_models):
    folder = tiny_dirs["gpt2"]
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]
    assert weights_sha256(folder) == digest
    tl, nn = tiny_models("gpt2", "tl"), tiny_models("gpt2", "nnsight")
    assert model_identity(tl) == model_identity(nn) == ModelIdentity(name=str(folder), weights_sha256=digest)
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_sha256(folder.parent)


def test_identity_tells_twins_and_processed_weights_apart(tiny_dirs, twin_dir):
    base = load_model(tiny_dirs["gpt2"], backend="tl", device="cpu")
    twin = load_model(twin_dir, backend="tl", device="cpu")
    processed = load_model(tiny_dirs["gpt2"], backend="tl", device="cpu", process_weights=True)
    a, b, c = model_identity(base), model_identity(twin), model_identity(processed)
    assert a.weights_sha256 != b.weights_sha256
    assert c.weights_sha256 == a.weights_sha256 and c.basis == "tl-processed" != a.basis
    check_trained_on(a, base, what="thing")
    with pytest.raises(ModelMismatchError, match=r"thing was trained on .* weights"):
        check_trained_on(a, twin, what="thing")
    with pytest.raises(ModelMismatchError, match="residual basis"):
        check_trained_on(a, processed, what="thing")
    check_trained_on(a, twin, what="thing", allow_mismatch=True)
    assert ModelIdentity.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="unknown"):
        ModelIdentity.from_dict({"name": "x", "hash": "y"})


def test_sae_refuses_a_model_it_was_not_trained_on(tiny_dirs, twin_dir, tmp_path):
    base = load_model(tiny_dirs["gpt2"], backend="tl", device="cpu")
    twin = load_model(twin_dir, backend="tl", device="cpu")
    sae = random_topk_sae(base.cfg.d_model, 32, 4, HOOK)
    assert sae.check_model(twin).hook_name == HOOK  # no provenance recorded: any model of that width
    import dataclasses

    sae = dataclasses.replace(sae, trained_on=model_identity(base))
    sae.check_model(base)
    with pytest.raises(ModelMismatchError, match="SAE random-topk"):
        sae.check_model(twin)
    sae.check_model(twin, allow_mismatch=True)
    # the record survives the sparsify folder round trip, and load_sae(allow_mismatch=True) lifts the check
    folder = save_sparsify(sae, tmp_path / "layers.1")
    assert (
        json.loads((folder / "cfg.json").read_text())["trained_on"]["weights_sha256"]
        == model_identity(base).weights_sha256
    )
    loaded = load_sae(folder)
    assert loaded.trained_on == sae.trained_on
    with pytest.raises(ModelMismatchError):
        loaded.check_model(twin)
    load_sae(folder, allow_mismatch=True).check_model(twin)
    with pytest.raises(SAESiteError):  # the width check still comes first
        random_topk_sae(7, 8, 2, HOOK).check_model(base)


def test_zoo_sae_records_its_organism():
    from interp import zoo

    sae = load_sae("sae/base-resid-L2")
    card = json.loads((zoo.path("sae/base-resid-L2") / "card.json").read_text())
    assert sae.trained_on == ModelIdentity(
        name="organism/base", weights_sha256=card["organism_weights_sha256"]
    )
    base = load_model("organism/base", backend="tl", device="cpu")
    chat = load_model("organism/chat-ft", backend="tl", device="cpu")
    sae.check_model(base)
    with pytest.raises(ModelMismatchError, match="organism/chat-ft"):
        sae.check_model(chat)


def test_sae_lens_folder_records_the_weights_hash(tiny_dirs, twin_dir, tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    base = load_model(tiny_dirs["gpt2"], backend="tl", device="cpu")
    sl = TopKSAE(TopKSAEConfig(d_in=base.cfg.d_model, d_sae=16, k=2))
    sl.cfg.metadata.hook_name = HOOK
    sl.cfg.metadata.model_name = "tiny-gpt2"
    sl.cfg.metadata.model_weights_sha256 = model_identity(base).weights_sha256  # as the zoo writes it
    sl.save_model(tmp_path / "sl")
    coder = load_sae(tmp_path / "sl")
    assert coder.trained_on == ModelIdentity(
        name="tiny-gpt2", weights_sha256=model_identity(base).weights_sha256
    )
    coder.check_model(base)  # another name for the same weights is fine
    with pytest.raises(ModelMismatchError):
        coder.check_model(load_model(twin_dir, backend="tl", device="cpu"))
