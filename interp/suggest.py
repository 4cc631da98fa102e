"""'Did you mean ...?' hints for misspelt names (config keys, experiment kinds, site components)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: object, valid: Iterable[str], *, cutoff: float = 0.5) -> str:
    """`" Did you mean 'a', 'b'?"` for the up to three valid names closest to `name`, or `""` if none is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
