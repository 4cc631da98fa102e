"""Tiny random Hugging Face checkpoints built from configs, for tests and benchmarks (no downloads)."""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("gpt2", "gpt_neox", "llama", "qwen2", "gemma2")


def tiny_config(
    arch: str,
    *,
    vocab_size: int,
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 64,
    n_ctx: int = 128,
    n_kv_heads: int | None = None,
):
    """A small `transformers` config of architecture `arch` (one of ARCHITECTURES)."""
    import transformers as tf

    d_head = d_model // n_heads
    common = dict(
        vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False
    )
    if arch == "gpt2":
        return tf.GPT2Config(
            n_layer=n_layers,
            n_head=n_heads,
            n_embd=d_model,
            n_positions=n_ctx,  # no n_ctx: transformers 5 no longer writes it (as checkpoints saved today)
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            max_position_embeddings=n_ctx,
            rotary_pct=0.25,
            use_parallel_residual=True,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            **common,
        )
    kv = n_kv_heads if n_kv_heads is not None else max(1, n_heads // 2)
    if arch == "llama":
        return tf.LlamaConfig(
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=kv,
            hidden_size=d_model,
            intermediate_size=3 * d_model,
            max_position_embeddings=n_ctx,
            head_dim=d_head,
            **common,
        )
    if arch == "qwen2":
        return tf.Qwen2Config(
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=kv,
            hidden_size=d_model,
            intermediate_size=3 * d_model,
            max_position_embeddings=n_ctx,
            use_sliding_window=False,
            **common,
        )
    if arch == "gemma2":
        return tf.Gemma2Config(
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=kv,
            hidden_size=d_model,
            intermediate_size=3 * d_model,
            max_position_embeddings=n_ctx,
            head_dim=d_head,
            sliding_window=n_ctx,
            query_pre_attn_scalar=d_head,
            **common,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")


def build_tiny_checkpoint(
    arch: str, folder: str | Path, tokenizer, *, seed: int = 0, **config_kwargs
) -> Path:
    """Write a randomly initialised `arch` model plus `tokenizer` as an HF checkpoint folder; return it."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    cfg = tiny_config(arch, vocab_size=len(tokenizer), **config_kwargs)
    cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    cfg.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # non-trivial norm weights and biases, so that processing mistakes show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
