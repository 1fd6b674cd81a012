"""`python -m credo …` is the `credo` command (what `torchrun -m credo train …` runs on every rank)."""

import sys

from credo.cli import main

if __name__ == "__main__":
    sys.exit(main())
