"""The package's shape: layers that import one way only, and no import circles.

Every import counts, also one inside a function (a lazy import still ties two modules together). The
layer map below is the architecture page's (docs/architecture.md): a module may import its own layer's
modules and lower layers', never a higher layer's; a new module must be placed here to pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zer02llm

PACKAGE = Path(zer02llm.__file__).resolve().parent

# lowest first; a module belongs to the longest prefix that names it
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["zer02llm.resources", "zer02llm.config", "zer02llm.lazy"]),
    ("core", ["zer02llm.tokenizer", "zer02llm.hardware", "zer02llm.model"]),
    ("data and storage", ["zer02llm.data", "zer02llm.checkpoint"]),
    ("inference and interop", ["zer02llm.inference", "zer02llm.interop"]),
    ("evaluation", ["zer02llm.evals"]),
    ("training and sweeps", ["zer02llm.training", "zer02llm.sweeps"]),
    ("entry points", ["zer02llm", "zer02llm.cli", "zer02llm.train", "zer02llm.eval", "zer02llm.generate",
                      "zer02llm.serve", "zer02llm.export", "zer02llm.sweep", "zer02llm.evaluate",
                      "zer02llm.optuna_search"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "_shipped" not in p.parts}


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The zer02llm modules that `path` imports (a `from pkg import sub` of a submodule names the submodule)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("zer02llm"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("zer02llm"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    found.discard(name)
    return {m for m in found if m in modules}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{module} is in no layer: place it in LAYERS (tests/architecture/test_layers.py)")
    return rank


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    unplaced = [m for m in graph if m != "zer02llm" and layer_of(m) == len(LAYERS) - 1
                and not any(m == p for p in LAYERS[-1][1])]
    assert not unplaced, f"modules that fall to the entry-point layer by default: {unplaced}"


def test_no_import_goes_up_a_layer(graph):
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
              for m, deps in sorted(graph.items()) for dep in sorted(deps)
              if layer_of(dep) > layer_of(m) and not m.startswith(dep + ".")]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as [a, b, ..., a], or [] (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            elif not state.get(dep):
                state[dep] = 1
                path.append(dep)
                stack.append(iter(sorted(graph[dep])))
    return []


def test_no_import_circles(graph):
    # a package's __init__ naming its own submodules is not a circle: Python imports the package first
    edges = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")}
             for m, deps in graph.items()}
    cycle = find_cycle(edges)
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_checks_find_a_circle_and_an_upward_import():
    """The checks themselves: a made-up graph with a circle and a model module importing training."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    assert layer_of("zer02llm.model.transformer") < layer_of("zer02llm.training.trainer")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("elsewhere.module")
