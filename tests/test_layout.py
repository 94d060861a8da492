"""The package reads as its architecture: one subpackage per concern, imports that flow one way.

The imports are read from the source (ast), so a new cycle or a layer reaching upwards
fails here before anyone hits it at run time.
"""

import ast
import subprocess
from pathlib import Path

import tinyae

PACKAGE = Path(tinyae.__file__).parent
ROOT = PACKAGE.parent

# Lower layers never import higher ones. A module's layer is its longest matching prefix.
LAYERS = ["tinyae.errors", "tinyae.utils", "tinyae.config", "tinyae.data.images", "tinyae.models", "tinyae.data",
          "tinyae.shipping", "tinyae.evaluation", "tinyae.training", "tinyae.cli", "tinyae.__main__", "tinyae"]
# Function-local imports of tinyae modules are allowed only for documented optional dependencies: none today.
LOCAL_IMPORTS_ALLOWED: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported tinyae module, line, inside a function) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, local) for a in child.names if a.name.startswith("tinyae"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("tinyae"):
                for alias in child.names:
                    target = f"{child.module}.{alias.name}"
                    found.append((target if target in MODULES else child.module, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    return {name: {target for target, _, _ in imports(path)} for name, path in MODULES.items()}


def layer(name: str) -> int:
    return max((i for i, prefix in enumerate(LAYERS) if name == prefix or name.startswith(prefix + ".")),
               key=lambda i: len(LAYERS[i]))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_flow_from_higher_layers_to_lower_ones():
    upward = [f"{name} (layer {LAYERS[layer(name)]}) imports {target} (layer {LAYERS[layer(target)]})"
              for name, targets in graph().items() for target in targets if layer(target) > layer(name)]
    assert not upward, "\n".join(upward)


def test_no_function_local_imports_of_tinyae_modules():
    local = [f"{module_name(path)}:{line} imports {target} inside a function"
             for path in MODULES.values() for target, line, inside in imports(path)
             if inside and target not in LOCAL_IMPORTS_ALLOWED]
    assert not local, "\n".join(local)


def test_one_subpackage_per_concern():
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert subpackages == ["cli", "data", "evaluation", "models", "shipping", "training", "utils"]
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py", "config.py", "errors.py"]


def test_nothing_in_the_repository_points_outside_it():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout (an sdist): nothing to check
        return
    machine = ["/" + "work/", "../" + "shared", "REFERENCE" + ".md", "/" + "root/"]
    offending = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".safetensors", ".png", ".pth", ".pkl", ".bin"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        offending += [f"{name}: {needle}" for needle in machine if needle in text]
    assert not offending, "\n".join(offending)


def test_only_entry_points_configure_logging():
    """The `tinyae` command, and the processes the quality study starts for its runs; never library code."""
    calls = sorted(module_name(path) for path in MODULES.values() if "logging.basicConfig" in path.read_text())
    assert calls == ["tinyae.cli", "tinyae.training.study"]
