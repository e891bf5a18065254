"""Shared test fixtures.

The real HAM10000 / DermNet test material lives outside the project (never copied into it). Tests find it through
the HAM_DATA environment variable, defaulting to ../shared/data beside the repository, and are skipped with a
visible reason where it is absent.
"""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def ham_data_dir() -> Path:
    return Path(os.environ.get("HAM_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: needs the real test data in $HAM_DATA (../shared/data)")
    config.addinivalue_line("markers", "slow: runs the whole DVC pipeline")


@pytest.fixture(scope="session")
def ham_data() -> Path:
    path = ham_data_dir()
    if not (path / "ham10000").is_dir():
        pytest.skip(f"real test data not found at {path} (set HAM_DATA)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
