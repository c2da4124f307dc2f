"""The README's install has no transformers (pip install -e ".[dev]"); CI and a developer's machine may. To run
the suite as that install sees it, put this directory first on PYTHONPATH (subprocesses inherit it):

    PYTHONPATH=tests/support/without_transformers python -m pytest tests/interop tests/scripts

Python imports sitecustomize at start-up; this one hides transformers from the path finder, so
`import transformers` fails and importlib.util.find_spec("transformers") is None, as when it is not installed.
"""
import importlib.machinery as _machinery

_find_spec = _machinery.PathFinder.find_spec.__func__


def _without_transformers(cls, name, path=None, target=None):
    if name == "transformers" or name.startswith("transformers."):
        return None
    return _find_spec(cls, name, path, target)


_machinery.PathFinder.find_spec = classmethod(_without_transformers)
