"""`python -m runner`: the `zbatch` command."""

import sys

from runner.cli import main

sys.exit(main())
