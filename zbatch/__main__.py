"""`python -m zbatch`: the `zbatch` command."""

import sys

from runner.cli import main

sys.exit(main())
