"""`python -m vitkit.cli ...` (and `torchrun -m vitkit.cli ...`): the `vitkit` command."""

import sys

from . import main

sys.exit(main())
