"""Checkpoints as users save them today: `save_pretrained` folders of every architecture, on both backends.

Tiny random configs are built here with `transformers` directly (a GPT-2 saved by transformers 5 has no
`n_ctx`), carry a realistic tokenizer, and must give HF-equal logits; pickle-only weights need an opt-in,
remote code runs with `trust_remote_code=True` and never prompts, and backend failures are `ModelLoadError`s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures import REALISTIC

from interp import load_model
from interp.models import ModelLoadError

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The apple is in Box F."]
# architecture -> the realistic tokenizer its hub models use
TOKENIZERS = {
    "gpt2": "gpt2_bpe",
    "gpt_neox": "gpt2_bpe",
    "llama": "sentencepiece",
    "qwen2": "no_bos",
    "gemma2": "sentencepiece",
}


def _config(arch: str, vocab_size: int, tok):
    """The config a user would write for a small model of `arch` (no extra fields)."""
    import transformers as tf

    ids = dict(vocab_size=vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    small = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, max_position_embeddings=64)
    if arch == "gpt2":
        return tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, **ids)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(intermediate_size=64, rotary_pct=0.25, **small, **ids)
    if arch == "llama":
        return tf.LlamaConfig(intermediate_size=64, num_key_value_heads=2, **small, **ids)
    if arch == "qwen2":
        return tf.Qwen2Config(intermediate_size=64, num_key_value_heads=2, **small, **ids)
    return tf.Gemma2Config(intermediate_size=64, num_key_value_heads=2, head_dim=8, **small, **ids)


def _save(arch: str, folder: Path, *, pickle_only: bool = False) -> Path:
    """Save a tiny random `arch` model and its tokenizer as `save_pretrained` does (or as an old pickle-only
    checkpoint: pytorch_model.bin, no safetensors)."""
    from transformers import AutoModelForCausalLM

    tok = REALISTIC[TOKENIZERS[arch]]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tok), tok))
    with torch.no_grad():  # non-trivial norms and biases, so that a mis-read weight shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if pickle_only:  # transformers 5 writes only safetensors; older versions wrote this file
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    return {arch: _save(arch, root / arch) for arch in TOKENIZERS}


def _hf_logits(folder: Path, ids, mask, **kwargs):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    with torch.no_grad():
        return hf(ids, attention_mask=mask).logits


def _max_diff(model, folder: Path, **hf_kwargs) -> float:
    ids, mask = model.to_tokens(PROMPTS, return_mask=True)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    ref = _hf_logits(folder, ids, mask, **hf_kwargs)
    assert out.shape == ref.shape
    return (out - ref)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", list(TOKENIZERS))
def test_saved_checkpoint_loads_with_hf_logits(saved, arch, backend):
    folder = saved[arch]
    config = json.loads((folder / "config.json").read_text())
    if arch == "gpt2":
        assert "n_ctx" not in config  # the case TransformerLens used to fail on
    assert (folder / "model.safetensors").is_file()
    model = load_model(folder, backend=backend, device="cpu")
    assert _max_diff(model, folder) <= 1e-5


def test_pickle_only_checkpoint_needs_opt_in(tmp_path):
    folder = _save("gpt2", tmp_path / "pickled", pickle_only=True)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle=True"):
        load_model(folder, backend="tl", device="cpu")
    model = load_model(folder, backend="tl", device="cpu", allow_pickle=True)
    assert _max_diff(model, folder, use_safetensors=False) <= 1e-5
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="has no model weights"):
        load_model(folder, backend="nnsight", device="cpu")


def test_backend_failure_is_a_load_error_naming_folder_and_cause(tmp_path):
    import transformers as tf

    tok = REALISTIC["sentencepiece"]()
    folder = tmp_path / "mpt"
    cfg = tf.MptConfig(d_model=32, n_heads=4, n_layers=1, vocab_size=len(tok))
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(
        ModelLoadError, match=rf"TransformerLens could not load {folder}: NotImplementedError: Mpt"
    ):
        load_model(folder, backend="tl", device="cpu")
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=rf"could not load the tokenizer of {folder}: "):
        load_model(folder, backend="nnsight", device="cpu")


_REMOTE_CODE = {
    "configuration_tiny.py": """
        from transformers import GPT2Config


        class TinyConfig(GPT2Config):
            model_type = "tiny_custom_gpt2"
        """,
    "modeling_tiny.py": """
        from transformers import GPT2LMHeadModel

        from .configuration_tiny import TinyConfig


        class TinyForCausalLM(GPT2LMHeadModel):
            config_class = TinyConfig
        """,
}

_LOAD_SCRIPT = """
import sys
from pathlib import Path

sys.path.insert(0, {tests!r})
import torch
from test_models_checkpoints import _max_diff

from interp import load_model
from interp.models import ModelLoadError

folder = Path({folder!r})
for backend in ("tl", "nnsight"):
    try:
        load_model(folder, backend=backend, device="cpu")
        print("loaded without trust_remote_code")
    except ModelLoadError as e:
        print("refused:", "trust_remote_code" in str(e))
    model = load_model(folder, backend=backend, device="cpu", trust_remote_code=True)
    diff = _max_diff(model, folder, trust_remote_code=True)
    print(backend, type(getattr(model, "hf_model", None)).__name__, diff)
"""


def test_trust_remote_code_reaches_every_read_and_never_prompts(tmp_path):
    """A checkpoint with custom code loads on both backends with stdin closed (transformers would ask [y/N])."""
    folder = _save("gpt2", tmp_path / "custom")
    for name, code in _REMOTE_CODE.items():
        (folder / name).write_text(textwrap.dedent(code).lstrip())
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "tiny_custom_gpt2"
    config["auto_map"] = {
        "AutoConfig": "configuration_tiny.TinyConfig",
        "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    env = os.environ | {
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    script = _LOAD_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(folder))
    (tmp_path / "load.py").write_text(script)
    out = subprocess.run(
        [sys.executable, str(tmp_path / "load.py")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert "[y/N]" not in out.stdout + out.stderr
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines.count("refused: True") == 2  # without the flag: our load error, not a prompt
    for backend in ("tl", "nnsight"):
        (line,) = [ln for ln in lines if ln.startswith(backend + " ")]
        _, cls, diff = line.split()
        assert float(diff) <= 1e-5
    assert [ln.split()[1] for ln in lines if ln.startswith("nnsight ")] == ["TinyForCausalLM"]  # it ran


def test_patch_sweep_on_gpt2_bpe_ioi_equals_transformerlens(saved):
    """interp's patch sweep on IOI prompts tokenised by GPT-2's BPE = TL's get_act_patch_resid_pre."""
    from transformer_lens import patching

    from interp.metrics import LogitDiff
    from interp.patching import patch_sweep
    from interp.tasks import make

    tok = REALISTIC["gpt2_bpe"]()
    ps = make("ioi", tok, n=6, seed=0, template=0, same_length=True)
    assert int(ps.clean[0, 0]) == tok.bos_token_id and bool(ps.attention_mask.all())
    tl_model = load_model(saved["gpt2"], backend="tl", device="cpu")
    rows = torch.arange(len(ps))

    def metric(logits):
        last = logits[rows, ps.end]
        return (last[rows, ps.answer_ids] - last[rows, ps.wrong_ids]).mean()

    with torch.no_grad():
        _, clean_cache = tl_model.tl.run_with_cache(ps.clean)
        ref = patching.get_act_patch_resid_pre(tl_model.tl, ps.corrupt, clean_cache, metric)
        ref_z = patching.get_act_patch_attn_head_out_by_pos(tl_model.tl, ps.corrupt, clean_cache, metric)
    assert ref.abs().max() > 0
    nn_model = load_model(saved["gpt2"], backend="nnsight", device="cpu")
    for model in (tl_model, nn_model):
        res = patch_sweep(model, clean=ps, metric=LogitDiff.from_prompts(ps), component="resid_pre")
        assert res.scores.shape == ref.shape
        assert (res.scores - ref).abs().max().item() <= 1e-5, model.backend
    z = patch_sweep(tl_model, clean=ps, metric=LogitDiff.from_prompts(ps), component="z", per_head=True)
    assert z.scores.shape == ref_z.shape and (z.scores - ref_z).abs().max().item() <= 1e-5
