"""Model loading on both backends: exact HF logits, site parity across backends, padding, bad inputs."""

import subprocess
import sys

import pytest
import torch

import interp
from interp.models import ModelLoadError
from interp.sites import Site, SiteError

ARCHS = ["gpt2", "gpt_neox", "llama", "qwen2", "gemma2"]
PROMPTS = ["When Mary and John went to the store , John gave a drink to", "Tom bought a ball"]


def _hf_logits(folder, ids, mask):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_logits_equal_transformers(tiny_dirs, tiny_models, arch, backend):
    model = tiny_models(arch, backend)
    ids, mask = model.to_tokens(PROMPTS, return_mask=True)
    ref = _hf_logits(tiny_dirs[arch], ids, mask)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    real = mask.bool()
    assert out.shape == ref.shape
    assert (out - ref)[real].abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_every_site_equal_across_backends(tiny_models, arch):
    tl, nn = tiny_models(arch, "tl"), tiny_models(arch, "nnsight")
    ids, mask = tl.to_tokens(PROMPTS, return_mask=True)
    sites = [Site(c, layer) for c in nn.supported_components for layer in range(tl.cfg.n_layers)]
    with torch.no_grad():
        _, ct = tl.run_with_cache(ids, sites, attention_mask=mask)
        _, cn = nn.run_with_cache(ids, sites, attention_mask=mask)
    real = mask.bool()
    for s in sites:
        a, b = ct[s.hook_name], cn[s.hook_name]
        assert a.shape == b.shape, s
        if s.component == "pattern":  # [b, h, q, k]: compare real query/key pairs
            keep = real[:, None, :, None] & real[:, None, None, :]
            diff = (a - b)[keep.expand_as(a)]
        else:
            diff = (a - b)[real]
        assert diff.abs().max().item() <= 1e-5, s


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("component", ["z", "resid_mid", "q", "v", "mlp_post", "attn_out", "resid_post"])
def test_writes_equal_across_backends(tiny_models, arch, component):
    """Patching the same site with the same edit gives the same logits on both backends."""
    tl, nn = tiny_models(arch, "tl"), tiny_models(arch, "nnsight")
    ids = tl.to_tokens(PROMPTS[:1])
    site = Site(component, 1)

    def edit(act, s):
        out = act.clone()
        if s.per_head:
            out[:, 3, 1] = torch.linspace(-20.0, 20.0, out.shape[-1])
        else:
            out[:, 3] *= -2.0
        return out

    with torch.no_grad():
        a, b = tl.run_with_hooks(ids, [(site, edit)]), nn.run_with_hooks(ids, [(site, edit)])
        clean = tl(ids)
    assert (a - b).abs().max().item() <= 1e-5
    assert (a - clean).abs().max().item() > 1e-4  # the edit did something


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_left_right_padding_parity(tiny_models, arch, backend):
    model = tiny_models(arch, backend)
    r_ids, r_mask = model.to_tokens(PROMPTS, return_mask=True, padding_side="right")
    l_ids, l_mask = model.to_tokens(PROMPTS, return_mask=True, padding_side="left")
    with torch.no_grad():
        r, left = model(r_ids, attention_mask=r_mask), model(l_ids, attention_mask=l_mask)
    for i in range(len(PROMPTS)):
        a = r[i][r_mask[i].bool()]
        b = left[i][l_mask[i].bool()]
        assert (a - b).abs().max().item() <= 1e-4


def test_config_facts(tiny_models):
    m = tiny_models("llama", "tl")
    c = m.cfg
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_head) == (2, 4, 2, 64, 16)
    assert c.d_vocab == len(m.tokenizer) and c.architecture == "LlamaForCausalLM"


def test_bad_inputs_raise(tiny_dirs, tiny_models, tmp_path):
    model = tiny_models("gpt2", "tl")
    ids = model.to_tokens(PROMPTS[:1])
    with pytest.raises(SiteError, match="resid_pre"):
        Site("resid_pree", 0)
    with pytest.raises(SiteError, match="layer 7 out of range"):
        model.run_with_cache(ids, [Site("resid_pre", 7)])
    with pytest.raises(SiteError, match="head 9 out of range"):
        model.run_with_hooks(ids, [(Site("z", 0, head=9), lambda a, s: a)])
    with pytest.raises(ValueError, match="not a single token"):
        model.to_single_token("Mary John")
    with pytest.raises(ModelLoadError, match="does not exist"):
        interp.load_model(tmp_path / "missing", backend="tl")
    with pytest.raises(ModelLoadError, match="unreachable"):
        interp.load_model("some-org/some-model-that-is-not-cached", backend="tl")
    with pytest.raises(ValueError, match="token ids must lie"):
        model(torch.tensor([[0, 10_000]]))
    with pytest.raises(ValueError, match="unknown backend"):
        interp.load_model(tiny_dirs["gpt2"], backend="pytorch")
    nn = tiny_models("gpt2", "nnsight")
    with pytest.raises(SiteError, match="cannot write"):
        nn.run_with_hooks(ids, [(Site("pattern", 0), lambda a, s: a)])
    with pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(ids, [(Site("resid_pre", 0), lambda a, s: a[:, :1])])


def test_offline_hub_name_fails_fast():
    import time

    t = time.perf_counter()
    with pytest.raises(ModelLoadError):
        interp.load_model("gpt2-not-cached-anywhere", backend="tl")
    assert time.perf_counter() - t < 5.0


def test_import_is_light():
    code = (
        "import sys, interp, interp.sites, interp.models; "
        "bad = [m for m in ('transformer_lens', 'nnsight', 'sae_lens') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_site_hook_name_round_trip():
    from interp.sites import COMPONENTS, from_hook_name

    for c in COMPONENTS:
        s = Site(c) if c in ("embed", "pos_embed", "resid_final") else Site(c, 3)
        assert from_hook_name(s.hook_name) == s
    with pytest.raises(SiteError, match="Did you mean"):
        from_hook_name("blocks.0.hook_resid_pree")
