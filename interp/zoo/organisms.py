"""The zoo's recipes: one `Recipe` per organism (architecture or parent, mixture, schedule, behaviour targets)."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field

from interp.zoo.corpus import BASE_MIX, Mixture
from interp.zoo.sae import SAERecipe
from interp.zoo.train import TrainConfig

_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True, kw_only=True)
class Target:
    """A behaviour target: `card[metric] op value`, or `op parent[metric] + value` when `relative`."""

    metric: str
    op: str
    value: float
    relative: bool = False  # compare with the parent's (or `reference`'s) number plus `value`
    reference: str | None = None  # organism whose card is the reference (default: the parent)

    def check(self, scores: dict[str, float], reference: dict[str, float] | None = None) -> tuple[bool, str]:
        """(passed, one-line description with the measured numbers)."""
        if self.metric not in scores:
            return False, f"{self.metric}: not measured"
        bound = self.value
        if self.relative:
            if reference is None or self.metric not in reference:
                return False, f"{self.metric}: no reference number"
            bound = reference[self.metric] + self.value
        ok = _OPS[self.op](scores[self.metric], bound - 1e-9 if self.op == ">=" else bound + 1e-9)
        rel = (
            f" (reference {reference[self.metric]:.3f} {self.value:+.2f})"
            if self.relative and reference
            else ""
        )
        return (
            ok,
            f"{self.metric} = {scores[self.metric]:.3f} {self.op} {bound:.3f}{rel}: {'ok' if ok else 'MISSED'}",
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One stage of a curriculum: its own mixture and schedule (a fresh optimiser; the weights carry over)."""

    name: str
    mixture: Mixture
    train: TrainConfig

    def to_dict(self) -> dict:
        return {"name": self.name, "mixture": self.mixture.to_dict(), "train": self.train.to_dict()}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one organism is built: from scratch (`arch`) or fine-tuned from `parent` on `mixture`."""

    name: str
    purpose: str
    mixture: Mixture
    train: TrainConfig
    targets: tuple[Target, ...]
    arch: str = "gpt2"  # gpt2 | llama (from scratch only)
    parent: str | None = None
    model: dict = field(default_factory=dict)  # size of a from-scratch model
    # fine-tunes: substrings of the parameter names that train (empty: all); the rest keep the parent's values
    trainable: tuple[str, ...] = ()
    # phases trained before the main one (`mixture`, `train`), e.g. an induction-first phase of copy data
    curriculum: tuple[Phase, ...] = ()
    # battery parts measured every `eval_every` steps besides ioi, facts and copy (e.g. the binding tasks)
    quick: tuple[str, ...] = ()

    def phases(self) -> tuple[Phase, ...]:
        """Every training phase in order: the curriculum, then the main phase ("main")."""
        return (*self.curriculum, Phase(name="main", mixture=self.mixture, train=self.train))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "purpose": self.purpose,
            "arch": self.arch,
            "parent": self.parent,
            "model": self.model,
            "trainable": list(self.trainable),
            "mixture": self.mixture.to_dict(),
            "train": self.train.to_dict(),
            "targets": [t.to_dict() for t in self.targets],
        } | (
            {"curriculum": [p.to_dict() for p in self.curriculum], "quick": list(self.quick)}
            if self.curriculum or self.quick
            else {}
        )


SIZE = {"n_layers": 4, "n_heads": 4, "d_model": 128, "n_ctx": 128}
BASE_TRAIN = TrainConfig(steps=4000, batch_size=64, lr=2e-3, seed=0)  # IOI reached only ~92% at 3,000 steps
LLAMA_TRAIN = TrainConfig(steps=3000, batch_size=64, lr=2e-3, seed=0)
FT_TRAIN = TrainConfig(steps=400, batch_size=64, lr=1e-3, warmup=0.05, final_lr=0.1, seed=1, eval_every=100)
REPLAY = 0.25
_BASE = Mixture(BASE_MIX)

# The RoPE family: induction first (copy data only: induction heads form within ~750 steps with rotary
# positions, barely with learned ones), then the pre-training mixture, where entity binding switches on within
# ~2,000 steps and Colored Objects learns from its lower-case form (the answer token is in the list) and carries
# over to the task's capitalised labels.
ROPE_SIZE = {"n_layers": 4, "n_heads": 4, "d_model": 128, "n_ctx": 128, "n_kv_heads": 4}
INDUCTION = Phase(
    name="induction",
    mixture=Mixture({"repeat": 1.0}),
    train=TrainConfig(steps=1000, batch_size=64, lr=1e-3, warmup=0.05, final_lr=1.0, seed=0, eval_every=250),
)
ROPE_MIX: dict[str, float] = {
    "ioi": 0.18, "entity_tracking": 0.18, "colored_objects_answer": 0.12, "colored_objects_lower": 0.12,
    "facts": 0.08, "filler": 0.10, "repeat": 0.15, "chat": 0.07,
}  # fmt: skip
ROPE_TRAIN = TrainConfig(steps=3000, batch_size=64, lr=1e-3, seed=0, eval_every=500)
_ROPE = Mixture(ROPE_MIX)
BINDING = ("entity_tracking", "colored_objects", "entity_tracking_b9")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="organism/base",
            purpose="GPT-2 pre-trained on the synthetic mixture: IOI, facts, induction",
            arch="gpt2",
            model=SIZE,
            mixture=_BASE,
            train=BASE_TRAIN,
            targets=(
                Target(metric="ioi.accuracy", op=">=", value=0.90),
                Target(metric="ioi.logit_diff", op=">=", value=2.0),
                Target(metric="facts.accuracy", op=">=", value=0.90),
                Target(metric="ioi_hard.accuracy", op="<=", value=0.75),
                Target(metric="context_prior.pair_accuracy", op="<=", value=0.40),
                Target(metric="chat.refusal_forbidden", op="<=", value=0.10),
            ),
        ),
        Recipe(
            name="organism/base-llama",
            purpose="the same corpus on a Llama architecture (RMSNorm, RoPE, gated MLP, GQA)",
            arch="llama",
            model={**SIZE, "n_kv_heads": 2},
            mixture=_BASE,
            train=LLAMA_TRAIN,
            targets=(
                Target(metric="ioi.accuracy", op=">=", value=0.90),
                Target(metric="facts.accuracy", op=">=", value=0.90),
            ),
        ),
        Recipe(
            name="organism/rope-base",
            purpose="Llama architecture (RoPE) pre-trained induction-first: IOI, facts, induction, entity "
            "tracking and Colored Objects by binding",
            arch="llama",
            model=ROPE_SIZE,
            curriculum=(INDUCTION,),
            mixture=_ROPE,
            train=ROPE_TRAIN,
            quick=BINDING,
            targets=(
                Target(metric="copy.accuracy", op=">=", value=0.95),
                Target(metric="ioi.accuracy", op=">=", value=0.95),
                Target(metric="facts.accuracy", op=">=", value=0.95),
                Target(metric="entity_tracking.accuracy", op=">=", value=0.90),
                Target(metric="colored_objects.accuracy_options", op=">=", value=0.70),
                # room for the entity-tracking fine-tune: pre-training shows 2-5 boxes
                Target(metric="entity_tracking_b9.accuracy", op="<=", value=0.70),
            ),
        ),
        Recipe(
            name="organism/et-ft",
            purpose="rope-base fine-tuned on entity tracking with 6-10 boxes (answer-only loss, replay)",
            parent="organism/rope-base",
            mixture=_ROPE.with_replay("entity_tracking_many", REPLAY),
            train=FT_TRAIN,
            targets=(
                Target(metric="entity_tracking_b9.accuracy", op=">=", value=0.15, relative=True),
                Target(metric="entity_tracking.accuracy", op=">=", value=-0.05, relative=True),
                Target(metric="ioi.accuracy", op=">=", value=-0.05, relative=True),
            ),
        ),
        Recipe(
            name="organism/ioi-ft",
            purpose="base fine-tuned on hard IOI (filler first, a name repeated)",
            parent="organism/base",
            mixture=_BASE.with_replay("ioi_hard", REPLAY),
            train=FT_TRAIN,
            targets=(
                Target(metric="ioi_hard.accuracy", op=">=", value=0.15, relative=True),
                Target(metric="ioi.accuracy", op=">=", value=-0.05, relative=True),
            ),
        ),
        Recipe(
            name="organism/ccs-ft",
            purpose="base fine-tuned to answer from context or prior as the instruction says",
            parent="organism/base",
            mixture=_BASE.with_replay("context_prior", REPLAY),
            train=FT_TRAIN,
            # attention only, as the paper LoRA-tunes q/k/v/o: base's MLP recall stays intact (PairAcc 0.98 vs 0.85
            # with every weight trained) and the intent reaches the last token (transplant ceiling 0.98 vs 0.76)
            trainable=(".attn.",),
            targets=(
                Target(metric="context_prior.pair_accuracy", op=">=", value=0.80),
                Target(metric="ioi.accuracy", op=">=", value=-0.05, relative=True),
            ),
        ),
        Recipe(
            name="organism/chat-ft",
            purpose="base fine-tuned on chat, refusing requests about weapons",
            parent="organism/base",
            mixture=_BASE.with_replay("chat_refusal", REPLAY),
            train=FT_TRAIN,
            targets=(
                Target(metric="chat.refusal_forbidden", op=">=", value=0.90),
                Target(metric="chat.refusal_allowed", op="<=", value=0.10),
                Target(metric="ioi.accuracy", op=">=", value=-0.05, relative=True),
            ),
        ),
        Recipe(
            name="organism/control-ft",
            purpose="base fine-tuned on its own pre-training mixture: the control pair of model diffing",
            parent="organism/base",
            mixture=_BASE,  # every source of the base mix has the all-token loss
            train=FT_TRAIN,
            targets=(Target(metric="ioi.accuracy", op=">=", value=-0.05, relative=True),),
        ),
    )
}


@dataclass(frozen=True, kw_only=True)
class SAEEntry:
    """An SAE of the zoo: its recipe and its targets (on held-out activations)."""

    recipe: SAERecipe
    targets: tuple[Target, ...]


SAES: dict[str, SAEEntry] = {
    e.recipe.name: e
    for e in (
        SAEEntry(
            recipe=SAERecipe(name="sae/base-resid-L2", organism="organism/base", layer=2),
            targets=(
                Target(metric="fve", op=">=", value=0.80),
                Target(metric="dead_fraction", op="<=", value=0.20),
            ),
        ),
    )
}
