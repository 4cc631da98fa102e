"""The site vocabulary: where in a transformer an activation lives, and its TransformerLens hook name.

A `Site` names one activation tensor of a forward pass (`component` at `layer`), optionally narrowed to one
attention head and/or one token position. Every backend translates sites to its own hooks; this module knows
nothing about backends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from interp.suggest import did_you_mean

# component -> (TL hook template, shape description, per-head?)
_COMPONENTS: dict[str, tuple[str, str, bool]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", "[batch, pos, d_model]", False),
    "resid_mid": ("blocks.{layer}.hook_resid_mid", "[batch, pos, d_model]", False),
    "resid_post": ("blocks.{layer}.hook_resid_post", "[batch, pos, d_model]", False),
    "attn_out": ("blocks.{layer}.hook_attn_out", "[batch, pos, d_model]", False),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", "[batch, pos, d_model]", False),
    "mlp_post": ("blocks.{layer}.mlp.hook_post", "[batch, pos, d_mlp]", False),
    "z": ("blocks.{layer}.attn.hook_z", "[batch, pos, head, d_head]", True),
    "q": ("blocks.{layer}.attn.hook_q", "[batch, pos, head, d_head]", True),
    "k": ("blocks.{layer}.attn.hook_k", "[batch, pos, kv_head, d_head]", True),
    "v": ("blocks.{layer}.attn.hook_v", "[batch, pos, kv_head, d_head]", True),
    "pattern": ("blocks.{layer}.attn.hook_pattern", "[batch, head, query_pos, key_pos]", True),
    "result": ("blocks.{layer}.attn.hook_result", "[batch, pos, head, d_model]", True),
}
# sites outside the blocks
_GLOBAL: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_final": "ln_final.hook_normalized",
}

COMPONENTS: tuple[str, ...] = tuple(_COMPONENTS) + tuple(_GLOBAL)
HEAD_COMPONENTS: tuple[str, ...] = tuple(c for c, (_, _, per_head) in _COMPONENTS.items() if per_head)


class SiteError(ValueError):
    """A site name, layer, head or position that does not exist."""


def _suggest(name: str, valid: tuple[str, ...] | list[str]) -> str:
    return f"{did_you_mean(name, valid, cutoff=0.4)} Valid: {', '.join(valid)}."


def check_component(component: str) -> str:
    """Return `component` if it is a known site component, else raise naming the closest valid ones."""
    if component not in COMPONENTS:
        raise SiteError(f"unknown site component {component!r}.{_suggest(component, COMPONENTS)}")
    return component


@dataclass(frozen=True, kw_only=False)
class Site:
    """One activation: `component` at `layer`, optionally one `head` and one token `pos`.

    `Site("z", 3, head=1)` is head 1's output (before W_O) at layer 3; `Site("resid_pre", 0, pos=5)` the residual
    stream entering block 0 at token 5. Global sites (`embed`, `pos_embed`, `resid_final`) take `layer=None`.
    """

    component: str
    layer: int | None = None
    head: int | None = None
    pos: int | None = None

    def __post_init__(self) -> None:
        check_component(self.component)
        if self.component in _GLOBAL:
            if self.layer is not None:
                raise SiteError(
                    f"site {self.component!r} is outside the blocks and takes no layer (got {self.layer})"
                )
        elif self.layer is None or not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"site {self.component!r} needs a layer >= 0 (got {self.layer!r})")
        if self.head is not None and self.component not in HEAD_COMPONENTS:
            raise SiteError(
                f"site {self.component!r} has no heads; per-head components are {', '.join(HEAD_COMPONENTS)}"
            )

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook name of this site (head and position are not part of it)."""
        if self.component in _GLOBAL:
            return _GLOBAL[self.component]
        return _COMPONENTS[self.component][0].format(layer=self.layer)

    @property
    def per_head(self) -> bool:
        return self.component in HEAD_COMPONENTS

    @property
    def shape(self) -> str:
        """A description of the full (un-narrowed) activation's shape."""
        return _COMPONENTS[self.component][1] if self.component in _COMPONENTS else "[batch, pos, d_model]"

    def at(self, *, head: int | None = None, pos: int | None = None) -> Site:
        """The same site narrowed to `head` and/or `pos`."""
        return Site(
            self.component,
            self.layer,
            head if head is not None else self.head,
            pos if pos is not None else self.pos,
        )

    def validate(self, *, n_layers: int, n_heads: int, n_kv_heads: int | None = None) -> Site:
        """Check layer and head against a model's dimensions; raise naming the valid range."""
        if self.layer is not None and self.layer >= n_layers:
            raise SiteError(
                f"{self}: layer {self.layer} out of range; the model has layers 0..{n_layers - 1}"
            )
        if self.head is not None:
            limit = n_kv_heads if (self.component in ("k", "v") and n_kv_heads) else n_heads
            if not 0 <= self.head < limit:
                raise SiteError(f"{self}: head {self.head} out of range; valid heads are 0..{limit - 1}")
        return self

    def __str__(self) -> str:
        parts = [self.component]
        if self.layer is not None:
            parts.append(f"L{self.layer}")
        if self.head is not None:
            parts.append(f"H{self.head}")
        if self.pos is not None:
            parts.append(f"P{self.pos}")
        return ".".join(parts)


_HOOK_RES = [
    (re.compile("^" + re.escape(t).replace(r"\{layer\}", r"(\d+)") + "$"), c)
    for c, (t, _, _) in _COMPONENTS.items()
]


def from_hook_name(name: str) -> Site:
    """Parse a TransformerLens hook name (`blocks.3.attn.hook_z`) back into a `Site`."""
    for glob, hook in _GLOBAL.items():
        if name == hook:
            return Site(glob)
    for rx, comp in _HOOK_RES:
        m = rx.match(name)
        if m:
            return Site(comp, int(m.group(1)))
    valid = [t.format(layer=0) for t, _, _ in _COMPONENTS.values()] + list(_GLOBAL.values())
    raise SiteError(f"unknown hook name {name!r}.{_suggest(name, valid)}")


def as_site(x: Site | str, layer: int | None = None) -> Site:
    """Accept a `Site`, a hook name, or a component name plus a layer."""
    if isinstance(x, Site):
        return x
    if "." in x or x.startswith("hook_"):
        return from_hook_name(x)
    return Site(x, layer)
