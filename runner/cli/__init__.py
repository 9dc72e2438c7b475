"""The `zbatch` command line: the parser, one module per command group, the live display."""

from runner.cli._main import main

__all__ = ["main"]
