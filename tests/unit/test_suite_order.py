"""The files `make test` starts first (tests/conftest.py: SLOW_FILES) exist: a renamed file would silently lose its
place at the front."""

from __future__ import annotations

import conftest


def test_every_file_started_first_exists():
    assert [name for name in conftest.SLOW_FILES if not (conftest.ROOT / name).is_file()] == []
    assert len(set(conftest.SLOW_FILES)) == len(conftest.SLOW_FILES)
