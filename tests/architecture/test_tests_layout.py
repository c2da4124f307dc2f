"""The test tree mirrors the package in folders without __init__ files, all of them on sys.path (conftest.py):
two test modules of one name would shadow each other, so every name must be unique."""

from __future__ import annotations

import collections
from pathlib import Path


def test_test_module_names_are_unique():
    tests = Path(__file__).resolve().parents[1]
    names = collections.Counter(p.name for p in tests.rglob("*.py") if p.name != "conftest.py")
    assert not [name for name, count in names.items() if count > 1]
