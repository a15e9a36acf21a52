"""The package's architecture, checked: every module sits in one layer, imports only its own layer or lower ones
(function-local imports included), no import circles, no private name imported across modules, and the flat
0.1 module paths still import as aliases of their new homes."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[1] / "lab"

# Bottom to top. A module may import from its own layer and the layers below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("lab.core",)),
    ("runtime", ("lab.runtime",)),
    ("data and quantizers", ("lab.data", "lab.quantizers", "lab.metrics.measures", "lab.metrics.fid_protocol")),
    ("models", ("lab.models",)),
    ("generation and evaluation", ("lab.generation", "lab.metrics.evaluate")),
    ("training", ("lab.train",)),
    ("config", ("lab.config",)),
    ("stages", ("lab.stages",)),
    ("sweeps and bench", ("lab.sweeps", "lab.bench")),
    ("command line", ("lab.cli", "lab.explore", "lab.__main__", "lab")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(LAB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LAB.rglob("*.py"))}


def layer_of(module: str) -> int:
    best = None  # the longest matching prefix wins (lab.metrics.evaluate over lab.metrics)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    if best is None:
        raise KeyError(module)
    return best[0]


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported lab module, names taken from it, line) for every import statement of ``module``, at any depth."""
    path = MODULES[module]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "lab"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] != "lab":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, [], node.lineno) if sub in MODULES else (base, [a.name], node.lineno))
    return out


def test_every_module_has_a_layer():
    missing = []
    for m in MODULES:
        try:
            layer_of(m)
        except KeyError:
            missing.append(m)
    assert not missing, f"modules in no layer of LAYERS (add them where they belong): {missing}"


def test_imports_go_down_the_layers_only():
    bad = []
    for m in MODULES:
        for target, _, line in imports(m):
            if target in MODULES and layer_of(target) > layer_of(m):
                bad.append(f"{MODULES[m].relative_to(LAB.parent)}:{line} ({LAYERS[layer_of(m)][0]}) imports "
                           f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


def test_no_import_circles():
    graph = {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in MODULES:
        if m not in state and (cycle := visit(m)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_no_private_name_is_imported_across_modules():
    bad = [f"{MODULES[m].relative_to(LAB.parent)}:{line} takes {n} from {t}"
           for m in MODULES for t, names, line in imports(m) for n in names if n.startswith("_") and t != m]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_lower_layers_take_plain_arguments_not_the_config():
    """Only the stages, sweeps, bench and command line read a whole experiment config (lab.config)."""
    top = layer_of("lab.config")
    bad = [m for m in MODULES if layer_of(m) < top and any(t == "lab.config" for t, _, _ in imports(m))]
    assert not bad, f"modules below the config layer that import lab.config: {bad}"


@pytest.mark.parametrize("old", ["run", "heads", "sweep", "registry", "correction", "generator_run", "cli_info"])
def test_the_flat_module_paths_of_0_1_are_aliases_of_the_new_homes(old):
    import lab

    alias = importlib.import_module(f"lab.{old}")
    home = importlib.import_module(lab.MOVED[old])
    assert alias is home and home.__spec__.name == lab.MOVED[old]
