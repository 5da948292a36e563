"""The package layering of DESIGN.md, read from the source: envs <- worldmodels <- planners <-
offline <- scripts with infra under all, no import cycle between modules, nothing imports
scripts, and no two modules share a name."""

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"infra": 0, "envs": 1, "worldmodels": 2, "planners": 3, "offline": 4}


def modules() -> dict[str, Path]:
    """'wmrl.planners.cem' -> its file, for every module of the installed packages."""
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out["wmrl." + ".".join(parts)] = path
    return out


def imports(path: Path, name: str, top_level_only: bool) -> set[str]:
    """The wmrl modules `path` imports (anywhere in the file, or only at its top level)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: -node.level or None]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("wmrl", "scripts") and m != "wmrl"}


def owner(module: str, known: dict) -> str | None:
    """The longest known module that `module` (a module or module.attribute) names."""
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def test_every_import_goes_down_the_layers_and_nothing_imports_scripts():
    known = modules()
    wrong = []
    for name, path in known.items():
        layer = LAYERS[name.split(".")[1]]
        for target in imports(path, name, top_level_only=False):
            if target.startswith("scripts"):
                wrong.append(f"{name} imports {target}")
                continue
            to = target.split(".")[1] if "." in target else ""
            if to not in LAYERS or LAYERS[to] > layer:
                wrong.append(f"{name} (layer {layer}) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    known = modules()
    graph = {
        name: {owner(t, known) for t in imports(path, name, top_level_only=True)} - {None, name}
        for name, path in known.items()
    }
    # a package's __init__ re-exporting its submodules is not a cycle of the code
    graph = {
        name: {t for t in targets if not (name.startswith(t + ".") and "__init__" not in t)}
        for name, targets in graph.items()
    }
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_no_two_modules_share_a_name():
    """(Scripts are commands, not modules: nothing imports them, and `scripts/collect.py` may run
    `envs.collect`.)"""
    names = Counter(name.rpartition(".")[2] for name, path in modules().items()
                    if path.stem != "__init__")  # fmt: skip
    assert [n for n, c in names.items() if c > 1] == []


def test_envs_import_without_torch():
    """Each worker of an asynchronous vector env imports `wmrl.envs` to build its env; torch
    there would add its whole import time to every worker's start."""
    code = "import sys, wmrl.envs, wmrl.envs.rollout; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
