"""Shared helpers for the benchmarks: random-init GPT-2 checkpoints, timing, JSON output."""

from __future__ import annotations

import os
import platform
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from interp.files import atomic_write_json

GPT2_SIZES = {
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
}


def random_gpt2(size: str, root: str | None = None) -> Path:
    """A random-init GPT-2 checkpoint (full 50,257-token vocabulary) with a word tokenizer; cached in a temp dir."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from interp.models.tokenizer import build_word_tokenizer

    folder = Path(root or tempfile.gettempdir()) / f"interp-bench-{size}"
    if (folder / "config.json").exists():
        return folder
    tok = build_word_tokenizer([f"w{i}" for i in range(50257 - 4)])
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=1024,
        n_ctx=1024,
        **GPT2_SIZES[size],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def timed(fn, *, sync: bool = True):
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_json(path, data, indent=2)


class LiveBytes(TorchDispatchMode):
    """Peak and largest bytes of the tensor storages allocated while active and still alive (any device).

    Every aten op's outputs are tracked until their storage is freed; views and in-place results of tensors that
    existed before (weights, inputs) are not new memory. Used as `with LiveBytes() as mem: ...; mem.peak`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = self.largest = 0
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            ptr, n = st.data_ptr(), st.nbytes()
            if n == 0 or ptr in given or ptr in self._refs:
                continue
            self.live += n
            self.peak, self.largest = max(self.peak, self.live), max(self.largest, n)
            self._refs[ptr] = weakref.ref(st, lambda _, ptr=ptr, n=n: self._free(ptr, n))
        return out

    def _free(self, ptr: int, n: int) -> None:
        self.live -= n
        self._refs.pop(ptr, None)
