from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RunningStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """An in-memory stack shared by a test module; tests must not depend on each other's data."""
    running = RunningStack(state_dir=tmp_path_factory.mktemp("stack"), in_memory=True,
                           extra_args=["--queue-visibility-timeout", "1"]).start()
    yield running
    running.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
