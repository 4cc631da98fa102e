"""Task prompt sets: IOI, Colored Objects, entity tracking and context-vs-prior (CCS), as `PromptSet`s.

`make(name, tokenizer, n=..., seed=...)` builds aligned clean/corrupt pairs on any fast tokenizer (word-level,
byte-level BPE, SentencePiece): each task module's `pools(tokenizer, ...)` keeps the words that tokenizer reads
as one token, and draws that still do not align are redrawn. Each task module also exposes
`sample(rng, split="train", ...)` for training text from the same templates, and `words.vocabulary()` lists
every word the generators can emit.
"""

from interp.tasks import colored_objects, context_prior, entity_tracking, ioi, words
from interp.tasks.encode import Pair, Sample
from interp.tasks.entity_tracking import desiderata
from interp.tasks.promptset import PromptSet
from interp.tasks.registry import TASKS, make, options
from interp.tasks.words import vocabulary

__all__ = [
    "TASKS",
    "Pair",
    "PromptSet",
    "Sample",
    "colored_objects",
    "context_prior",
    "desiderata",
    "entity_tracking",
    "ioi",
    "make",
    "options",
    "vocabulary",
    "words",
]
