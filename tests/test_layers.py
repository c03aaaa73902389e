"""The package's import graph: no circle, and each wing imports only what lies below it.

Every ``import`` counts, at module level or inside a function, so a circle cannot hide behind a
function-level import. ``python -m tests.test_layers`` prints the modules layer by layer (a
module's layer is one above the highest module it imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trpo"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of ``trpo`` and the ``trpo`` modules it imports (``from trpo.envs import
    BACKENDS`` imports ``trpo.envs``; ``from trpo.envs import gymnasium`` the submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        imported.add(full)
                    elif node.module in modules:
                        imported.add(node.module)
        graph[name] = imported - {name}
    return graph


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer: 0 for a module importing none of the package, else one above the
    highest it imports. Raises ``ValueError`` naming a circle if there is one."""
    depth: dict[str, int] = {}

    def visit(module: str, path: tuple[str, ...]) -> int:
        if module in path:
            circle = path[path.index(module):] + (module,)
            raise ValueError("import circle: " + " -> ".join(circle))
        if module not in depth:
            depth[module] = 1 + max((visit(m, path + (module,)) for m in graph[module]),
                                    default=-1)
        return depth[module]

    for module in graph:
        visit(module, ())
    return depth


def test_the_package_has_no_import_circle():
    layers(import_graph())


def test_the_layer_function_finds_a_circle():
    with pytest.raises(ValueError, match="a -> b -> a"):
        layers({"a": {"b"}, "b": {"a"}})


@pytest.mark.parametrize("module, must_not_import", [
    # The schema is the bottom of the package: it imports none of it, and no Gymnasium.
    ("trpo.config", {"*"}),
    # The run-file wing knows formats, not algorithms.
    ("trpo.io.", {"trpo.solvers", "trpo.networks", "trpo.critic", "trpo.rollout",
                  "trpo.learner", "trpo.loop", "trpo.envs", "trpo.train"}),
    # Environments know nothing of learning or of run files.
    ("trpo.envs", {"trpo.solvers", "trpo.networks", "trpo.critic", "trpo.rollout",
                   "trpo.learner", "trpo.loop", "trpo.io", "trpo.train"}),
    # The algorithm modules are independent of the loop that drives them.
    ("trpo.solvers", {"trpo.learner", "trpo.loop", "trpo.train", "trpo.io"}),
    ("trpo.learner", {"trpo.loop", "trpo.train"}),
])
def test_each_wing_imports_only_what_lies_below_it(module, must_not_import):
    graph = import_graph()
    checked = [m for m in graph if m == module or (module.endswith(".") and m.startswith(module))
               or m.startswith(module + ".")]
    assert checked, module
    for name in checked:
        bad = {m for m in graph[name] if "*" in must_not_import or any(
            m == banned or m.startswith(banned + ".") for banned in must_not_import)}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_the_schema_imports_no_gymnasium_and_no_torch():
    tree = ast.parse((PACKAGE / "config.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"gymnasium", "torch", "mujoco"}


if __name__ == "__main__":
    depth = layers(import_graph())
    for layer in range(max(depth.values()) + 1):
        print(layer, " ".join(sorted(m for m, d in depth.items() if d == layer)))
