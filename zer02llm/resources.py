"""Locate the files the project ships beside the package: `conf/`, `tokenizer/`, the sample corpus.

In a source checkout (plain or `pip install -e`) they sit at the top of the repository. A wheel
(`pip install .`) carries copies inside the package under `zer02llm/_shipped/` (see pyproject.toml),
so the same code works from any working directory either way.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def shipped_path(name: str) -> Path:
    """Path of a top-level shipped directory (`conf`, `tokenizer`), checkout first, then wheel copy."""
    for candidate in (REPO_DIR / name, PACKAGE_DIR / "_shipped" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"cannot find the shipped '{name}/' directory (looked in {REPO_DIR / name} and "
        f"{PACKAGE_DIR / '_shipped' / name}); reinstall the package with `pip install .`"
    )


def sample_data_path(filename: str) -> Path:
    """Path of a file of the small sample corpus shipped inside the package."""
    return PACKAGE_DIR / "sample_data" / filename
