"""Benchmarks, run as ``python -m benchmarks NAME`` (or ``make bench``).

Each prints a table comparing a part of the system with the raw library it wraps; see each module's docstring."""

import os

VERBOSE_ENV = "VIDEOP2R_BENCH_VERBOSE"


def verbose() -> bool:
    """``--verbose`` was given: vLLM's, Ray's and DeepSpeed's INFO output on the console (set by ``__main__``)."""
    return os.environ.get(VERBOSE_ENV) == "1"
