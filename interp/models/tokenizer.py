"""A word-level Hugging Face tokenizer built offline from a word list (for the organisms and the tests)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK)


def build_word_tokenizer(
    words: Iterable[str], *, save_to: str | Path | None = None, model_max_length: int = 1024
):
    """A `PreTrainedTokenizerFast` whose tokens are whole words and punctuation marks.

    Text is split on whitespace and punctuation (`tokenizers` `Whitespace` pre-tokenizer), so `" Mary"` and
    `"Mary"` are the same single token. The tokenizer prepends BOS like Llama's (`add_special_tokens=True`), pads
    with PAD and decodes by joining words with spaces. Ids are assigned in order: specials first, then the
    words in the order given (duplicates dropped), so the same list always gives the same ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *words):
        if not w or any(ch.isspace() for ch in w):
            raise ValueError(f"vocabulary word {w!r} is empty or contains whitespace; one token per word")
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    if save_to is not None:
        fast.save_pretrained(str(save_to))
    return fast
