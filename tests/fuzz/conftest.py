"""Hypothesis profiles for the property-based tests of the parsers (``tests/fuzz``).

``ci`` (the default, run by the README's test command): a short, reproducible run
(``derandomize``: the same examples every time). ``long``: many more, freshly random
examples, for a soak run before a release::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/fuzz -q

A failure prints the smallest failing example and a ``@reproduce_failure`` blob; keep the
example as an ``@example(...)`` regression case once the module is fixed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,  # two shared cores: timing varies too much for a per-example deadline
    derandomize=True,
    database=None,  # nothing written into the checkout
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def scaled(share: float) -> int:
    """A number of examples for a slow property: ``share`` of the active profile's ``max_examples``."""
    return max(5, int(settings.default.max_examples * share))
