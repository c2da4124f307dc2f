"""Start-up cost: what importing an entry point pulls in.

torch._dynamo (the compiler front end) took about half of a cold start of `serve` on 2 cores; it is
imported only when something compiles. Importing the config alone must not import torch at all, so a
refused command answers at once.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(statement: str, modules: list[str]) -> dict[str, bool]:
    code = f"import sys; {statement}; print(' '.join(str(m in sys.modules) for m in {modules!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(modules, (word == "True" for word in out)))


# each entry point with what it imports once its config is accepted
@pytest.mark.parametrize("entry", ["zer02llm.generate, zer02llm.inference.loading", "zer02llm.serve",
                                   "zer02llm.eval, zer02llm.inference.loading"])
def test_entry_points_do_not_import_the_compiler(entry):
    loaded = loaded_after(f"import {entry}", ["torch", "torch._dynamo"])
    assert loaded["torch"], "the check is void if torch itself was not imported"
    assert not loaded["torch._dynamo"], f"importing {entry} imports torch._dynamo"


def test_config_and_preflight_checks_do_not_import_torch():
    loaded = loaded_after("import zer02llm.config, zer02llm.training.preflight, zer02llm.training", ["torch"])
    assert not loaded["torch"]
