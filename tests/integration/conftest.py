"""Fixtures shared by the integration tests."""

from pathlib import Path

import pytest

from tests.integration.tiny_training import make_tiny_set


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny training set (``tiny_training.make_tiny_set``), made once per test module."""
    return make_tiny_set(tmp_path_factory.mktemp("tiny_set"))
