"""`python -m vitkit ...`: the `vitkit` command."""

import sys

from .cli import main

sys.exit(main())
