"""The package's layering, read from the source with `ast`: each layer imports only the layers below it, no
verb imports another verb, and no two modules import each other, however indirectly. Function-level
imports count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tuneforge"

# top-level name -> layer; a module may import its own layer's other packages (without cycles) and those below
LAYERS = {
    "errors": 0, "fileio": 0, "runs": 0, "tracking": 0, "config": 1,
    "models": 2, "data": 2, "tasks": 2, "generation": 2,
    "training": 3, "scoring": 3, "report": 3,
    "compress": 4, "export": 4, "continual": 4,
    "serve": 5, "deploy": 5,
    "recipes": 6,
    "cli": 7, "demo": 7, "quiet": 7, "cli_args": 7,
}
LIGHT = {"tuneforge": 0}  # the package's __init__ holds only the version


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every tuneforge module `path` imports, at any depth in the file; `from X import y` counts X.y when
    that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "tuneforge" or m.startswith("tuneforge.")}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: {m for m in imports_of(path, name) if m in files and m != name} for name, path in files.items()}


def layer_of(module: str) -> tuple[str, int | None]:
    parts = module.split(".")
    if len(parts) == 1:
        return "tuneforge", LIGHT["tuneforge"]
    return parts[1], LAYERS.get(parts[1])


def problems(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in sorted(graph.items()):
        top, layer = layer_of(module)
        if layer is None:
            found.append(f"{module}: its folder '{top}' has no layer; add it to LAYERS")
            continue
        for dep in sorted(deps):
            dep_top, dep_layer = layer_of(dep)
            if dep_layer is not None and dep_layer > layer:
                found.append(f"{module} imports {dep}: upward ({top} is layer {layer}, {dep_top} is {dep_layer})")
            if top == "recipes" and dep_top == "recipes" and dep != "tuneforge.recipes" and module != "tuneforge.recipes":
                found.append(f"{module} imports {dep}: a verb imports another verb")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of two or more modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [[*c, c[0]] for c in components]


def test_the_package_keeps_its_layers():
    found = problems(import_graph())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("files, expected", [
    ({"models/loading.py": "from tuneforge.compress.quant import gguf_writer\n", "compress/quant/gguf_writer.py": ""},
     "upward"),
    ({"recipes/prune.py": "from tuneforge.recipes.distill import KD\n", "recipes/distill.py": "KD = 1\n"},
     "a verb imports another verb"),
    ({"models/a.py": "def f():\n    from tuneforge.models import b\n", "models/b.py": "from tuneforge.models.a import f\n"},
     "import cycle"),
    ({"tasks/x.py": "from .. import errors\nfrom ..training import loop\n", "training/loop.py": "", "errors.py": ""}, "upward"),
])
def test_the_check_catches_each_kind_of_break(tmp_path, files, expected):
    root = tmp_path / "tuneforge"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        for parent in (root / rel).parents:
            if parent != root and root in parent.parents and not (parent / "__init__.py").exists():
                (parent / "__init__.py").write_text("")
    found = problems(import_graph(root))
    assert any(expected in p for p in found), found
