"""Fixtures shared by the integration tests at this level (observability: metrics, `rtrl status`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from observed_stack import Running, running_stack


@pytest.fixture
def observed_stack(tmp_path: Path) -> Iterator[Running]:
    """Redis, a replica, a learner and a gateway on ALE Pong in this process, each with /metrics."""
    with running_stack(tmp_path) as stack:
        yield stack
