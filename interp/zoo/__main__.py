"""`python -m interp.zoo NAME`: build one organism or SAE in this process (what `zoo.build` runs per entry)."""

import sys

from interp.zoo.build import BuildError, build_one

if len(sys.argv) != 2:
    sys.exit("usage: python -m interp.zoo NAME  (see interp.zoo.names())")
try:
    build_one(sys.argv[1])
except BuildError as e:
    print(f"BUILD FAILED: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
