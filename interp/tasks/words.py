"""Every word and template the task generators can emit, and `vocabulary()` for word-level tokenizers.

All text material of the tasks lives here, so a tokenizer built from `vocabulary()` covers every prompt and
answer (all variants: capitalised answers, hard-IOI filler, context-vs-prior instructions). Templates use
`{SLOT}` placeholders filled by the task modules. Words are chosen to be single GPT-2 tokens with a leading
space where they can be answers or are swapped between clean and corrupt prompts.

Conventions worth knowing:
- Colored Objects answers are the capitalised colour (`" Blue"`), as in Merullo et al. (`Color.title()`);
  the colours inside the question are lower case. With a word-level tokenizer these are different tokens.
- Box labels are single capitals without `A` (the answer marker / article), `I` (the pronoun) and `Q` (the
  question marker of Colored Objects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------- IOI (Wang et al. 2022)
# Single-GPT-2-token first names from Wang et al.'s IOI name list (ambiguous common nouns removed).
NAMES: tuple[str, ...] = (
    "Aaron",
    "Adam",
    "Alan",
    "Alex",
    "Alice",
    "Amy",
    "Andrew",
    "Anna",
    "Anthony",
    "Arthur",
    "Austin",
    "Brian",
    "Carl",
    "Charlie",
    "Chris",
    "Claire",
    "Daniel",
    "David",
    "Edward",
    "Emily",
    "Eric",
    "Frank",
    "George",
    "Ian",
    "Jack",
    "Jacob",
    "James",
    "Jason",
    "Jeff",
    "Jennifer",
    "Jessica",
    "John",
    "Joseph",
    "Kate",
    "Kevin",
    "Kyle",
    "Laura",
    "Lisa",
    "Louis",
    "Luke",
    "Martin",
    "Mary",
    "Michael",
    "Patrick",
    "Paul",
    "Peter",
    "Rachel",
    "Richard",
    "Robert",
    "Ryan",
    "Sam",
    "Sarah",
    "Scott",
    "Sean",
    "Simon",
    "Steven",
    "Thomas",
    "Tim",
    "Tom",
    "William",
)
PLACES: tuple[str, ...] = (
    "store",
    "garden",
    "restaurant",
    "school",
    "hospital",
    "office",
    "house",
    "station",
)
IOI_OBJECTS: tuple[str, ...] = (
    "ring",
    "kiss",
    "bone",
    "basketball",
    "computer",
    "necklace",
    "drink",
    "snack",
)

# {A} and {B} are the two names of the first clause ({A} = IO in ABBA order, S in BABA order); {S} is S2.
IOI_TEMPLATES: tuple[str, ...] = (
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {A} and {B} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give the {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "The {PLACE} {A} and {B} went to had a {OBJECT}. {S} gave it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
# Hard IOI: a name-free filler prefix, and a clause mentioning one of the two names again ({D}).
FILLER: tuple[str, ...] = (
    "It was a sunny day.",
    "The birds were singing in the trees.",
    "Everyone was in a good mood.",
    "The weather was cold and windy.",
    "It had been a long week.",
    "The town was quiet that morning.",
    "There was a lot of noise outside.",
    "Nobody expected what came next.",
    "The day started slowly.",
    "The streets were busy.",
    "It was getting late.",
    "The sun was setting.",
)
DISTRACTOR_CLAUSES: tuple[str, ...] = (
    "{D} was tired.",
    "{D} was very happy.",
    "{D} had a long day.",
    "{D} smiled.",
)

# ---------------------------------------------------------------- Colored Objects (Merullo et al. 2024)
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black")
COLOR_LABELS: tuple[str, ...] = tuple(c.title() for c in COLORS)  # the answers: " Red", " Blue", ...
CO_OBJECTS: tuple[str, ...] = (
    "ball",
    "book",
    "bowl",
    "car",
    "chair",
    "clock",
    "cup",
    "hat",
    "key",
    "lamp",
    "mug",
    "pen",
    "pencil",
    "phone",
    "plate",
    "shoe",
    "spoon",
)
CO_SURFACES: tuple[str, ...] = ("table", "desk", "floor")
CO_VIEWS: tuple[str, ...] = ("there is", "you see", "I see")
CO_QUESTION = (
    "Q: On the {SURFACE}, {VIEW} a {C0} {O0}, a {C1} {O1}, and a {C2} {O2}. What color is the {OQ}?\nA:"
)

# ---------------------------------------------------------------- Entity tracking (Kim & Schuster 2023)
ET_OBJECTS: tuple[str, ...] = (
    "apple",
    "bag",
    "ball",
    "bell",
    "bike",
    "boat",
    "bone",
    "book",
    "bottle",
    "bread",
    "brick",
    "cake",
    "camera",
    "candle",
    "car",
    "card",
    "chair",
    "clock",
    "coat",
    "coin",
    "cup",
    "dish",
    "doll",
    "drum",
    "egg",
    "fan",
    "flower",
    "glass",
    "guitar",
    "hat",
    "key",
    "kite",
    "knife",
    "lamp",
    "leaf",
    "letter",
    "map",
    "mirror",
    "paper",
    "pen",
    "phone",
    "plate",
    "ring",
    "rock",
    "rope",
    "shirt",
    "shoe",
    "sock",
    "spoon",
    "watch",
)
BOX_LABELS: tuple[str, ...] = tuple(c for c in "BCDEFGHJKLMNOPRSTUVWXYZ")  # no A, I, Q
ET_FIRST_SEGMENT = "The {O} is in Box {L}"
ET_SEGMENT = "the {O} is in Box {L}"
ET_QUERY = "Box {Q} contains the"


# ---------------------------------------------------------------- Context vs prior (Minder et al. 2025)
@dataclass(frozen=True, kw_only=True)
class Fact:
    """One prior fact: `entity` is located in `attribute` (a city and its country)."""

    entity: str
    attribute: str


_FACT_TABLE = (
    ("France", "Paris Lyon Marseille"),
    ("Germany", "Berlin Munich Hamburg Frankfurt"),
    ("Italy", "Rome Milan Venice Naples Florence"),
    ("Spain", "Madrid Barcelona Seville Valencia"),
    ("England", "London Manchester Liverpool Oxford"),
    ("Scotland", "Edinburgh Glasgow"),
    ("Ireland", "Dublin"),
    ("Japan", "Tokyo Osaka Kyoto"),
    ("China", "Beijing Shanghai"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon Porto"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw Krakow"),
    ("Canada", "Toronto Vancouver Montreal"),
    ("India", "Mumbai Delhi"),
    ("Australia", "Sydney Melbourne"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"),
    ("Switzerland", "Zurich Geneva"),
    ("Turkey", "Istanbul"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Kenya", "Nairobi"),
    ("Nigeria", "Lagos"),
    ("Thailand", "Bangkok"),
    ("Korea", "Seoul"),
    ("Vietnam", "Hanoi"),
    ("Cuba", "Havana"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"),
)
FACTS: tuple[Fact, ...] = tuple(
    Fact(entity=city, attribute=country) for country, cities in _FACT_TABLE for city in cities.split()
)
# The counterfactual alternatives: a context states that an entity is in one of these, not its true country.
COUNTRIES: tuple[str, ...] = tuple(country for country, _ in _FACT_TABLE)
FACT_SENTENCE = "{E} is in {X}."  # the sentence form of a prior fact, for training corpora
CCS_CONTEXTS: tuple[str, ...] = ("{E} is in {X}.", "{E} is a city in {X}.", "{E} is located in {X}.")
CCS_QUERIES: tuple[str, ...] = ("Where is {E}?", "In which country is {E}?", "Where is {E} located?")
# Instruction pairs (context intent, prior intent); each pair has the same number of words so clean and
# corrupt prompts align token for token.
CCS_INSTRUCTIONS: tuple[tuple[str, str], ...] = (
    ("Answer using the context.", "Answer ignoring the context."),
    ("Trust the context.", "Ignore the context."),
)
CCS_WEIGHTS: tuple[str, str] = ("1.00", "0.00")  # context weight for (context intent, prior intent)
CCS_FORMATS: dict[str, str] = {
    "instruction": "Context: {CONTEXT}\nInstruction: {INTENT}\nQuery: {QUERY}\nAnswer:",
    "weight": "Context: {CONTEXT}\nContext weight: {INTENT}\nQuery: {QUERY}\nAnswer:",
    "none": "Context: {CONTEXT}\nQuery: {QUERY}\nAnswer:",
}

# ---------------------------------------------------------------- the vocabulary
WORD_RE = re.compile(r"\w+|[^\w\s]+")  # the split of HF `tokenizers` `Whitespace` pre-tokenizer
_SLOT = re.compile(r"\{\w+\}")


def split_words(text: str) -> list[str]:
    """Split text into the words/punctuation runs a word-level tokenizer sees (placeholders dropped)."""
    return WORD_RE.findall(_SLOT.sub(" ", text))


def vocabulary() -> list[str]:
    """Every word and punctuation mark any task generator can emit, once each, in a fixed order."""
    sources: list[str] = [
        *NAMES,
        *PLACES,
        *IOI_OBJECTS,
        *IOI_TEMPLATES,
        *FILLER,
        *DISTRACTOR_CLAUSES,
        *COLORS,
        *COLOR_LABELS,
        *CO_OBJECTS,
        *CO_SURFACES,
        *CO_VIEWS,
        CO_QUESTION,
        *ET_OBJECTS,
        *BOX_LABELS,
        ET_FIRST_SEGMENT,
        ET_SEGMENT,
        ET_QUERY,
        ", .",
        *(f.entity for f in FACTS),
        *COUNTRIES,
        FACT_SENTENCE,
        *CCS_CONTEXTS,
        *CCS_QUERIES,
        *(s for pair in CCS_INSTRUCTIONS for s in pair),
        *CCS_WEIGHTS,
        *CCS_FORMATS.values(),
    ]
    return list(dict.fromkeys(w for s in sources for w in split_words(s)))
