"""The sweep runner's one error class for the user (grid-file errors are l2bn.grid.GridError)."""
from __future__ import annotations


class SweepError(ValueError):
    """A sweep that cannot run as asked (a flag, a resume, a missing package): one line that
    says what to do; run_grid.py prints it and exits 2."""
