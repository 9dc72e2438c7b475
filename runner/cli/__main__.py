"""`python -m runner.cli`: the `zbatch` command."""

import sys

from runner.cli._main import main

sys.exit(main())
