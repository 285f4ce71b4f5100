"""``python -m fastdd`` (and ``torchrun -m fastdd``): the command line."""

import sys

from .cli import main

sys.exit(main())
