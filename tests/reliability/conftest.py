"""The reliability suite's tally: how many fuzzed inputs and kills each test really ran, printed at the end
of the session (docs/reliability.md quotes these figures)."""

from __future__ import annotations

from collections import Counter

import pytest

TALLY: Counter = Counter()


@pytest.fixture(scope="session")
def tally() -> Counter:
    """``tally[what] += 1`` per example or kill; the totals are printed after the tests."""
    return TALLY


def pytest_terminal_summary(terminalreporter):
    if TALLY:
        terminalreporter.write_sep("-", "reliability tally")
        for what, count in sorted(TALLY.items()):
            terminalreporter.write_line(f"{what}: {count}")
