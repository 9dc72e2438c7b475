"""The operations on a batch: run, retry, cancel, adopt, verify, and plan's --whatif."""

from runner.ops._run import Target

__all__ = ["Target"]
