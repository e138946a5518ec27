"""The package's layers only point down, and no module imports itself round a cycle.

Every import in ``onnxprune/`` (at module level or inside a function) is read from the source,
and each module is placed in its layer: the first folder under ``onnxprune``, or the top-level
module. A layer may import its own modules and the layers below it, never one above. The
package's ``__init__`` (the public facade) may import anything and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import onnxprune

PACKAGE = Path(onnxprune.__file__).parent
# Bottom to top; layers on one line share a rank (base modules every layer may use).
LAYERS = [("errors", "progress", "heap"), ("parallel",), ("io",), ("graph",), ("rules",),
          ("groups",), ("runtime",), ("calibration",), ("importance",), ("allocation",),
          ("compensation",), ("rewrite",), ("verify",), ("recovery",), ("pipeline",),
          ("evaluate",), ("cli",)]
RANK = {layer: rank for rank, names in enumerate(LAYERS) for layer in names}


def _module_name(path: Path) -> str:
    parts = ("onnxprune",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or \
        (PACKAGE / relative / "__init__.py").is_file()


def _imports(path: Path, text: str | None = None) -> set[str]:
    """The onnxprune modules ``path`` (or ``text`` as if it were that file) imports (a name
    imported from a package counts as the module of that name when there is one, else as the
    package)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    source = path.read_text(encoding="utf-8") if text is None else text
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if _exists(name) else base)
    return {m for m in found if m.startswith("onnxprune.") and _exists(m)}


def _layer(module: str) -> str:
    return module.split(".")[1]


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module == "onnxprune":
            continue
        graph.add_node(module)
        for target in _imports(path):
            if target != module:
                graph.add_edge(module, target)
    return graph


def test_every_module_belongs_to_a_layer():
    unknown = sorted({_layer(m) for m in _graph()} - set(RANK))
    assert not unknown, f"modules outside the layer map: {unknown} (add them to LAYERS)"


def test_layers_only_point_down():
    upward = sorted(f"{a} -> {b}" for a, b in _graph().edges
                    if RANK.get(_layer(b), -1) > RANK.get(_layer(a), -1))
    assert not upward, "imports of a layer above:\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + c[:1]) for c in cycles)


def test_the_check_sees_an_upward_import():
    """The checks above can fail: an upward import, at module level or inside a function, as
    a rule would write it, is found and placed in the layer it reaches."""
    rule = PACKAGE / "rules" / "conv.py"
    found = _imports(rule, "from ..pipeline import prune\n"
                           "def f():\n    from ..evaluate.bench import benchmark\n")
    assert found == {"onnxprune.pipeline.prune", "onnxprune.evaluate.bench"}
    assert all(RANK[_layer(m)] > RANK["rules"] for m in found)
