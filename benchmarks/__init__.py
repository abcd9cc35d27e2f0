"""Benchmarks, run as ``python -m benchmarks {decode,rewards,rollout,learner}`` (or ``make bench``).

Each prints a table comparing a part of the system with the raw library it wraps; see each module's docstring."""
