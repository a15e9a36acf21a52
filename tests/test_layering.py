"""The package's architecture, checked: every module sits in one layer, imports only its own layer or lower ones
(function-local imports included), no import circles, no private name imported across modules, no module over
MAX_LINES lines, and the flat 0.1 module paths still import as aliases of their new homes."""
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
    ("data, quantizers and metrics", ("lab.data", "lab.quantizers", "lab.metrics")),
    ("models", ("lab.models",)),
    ("generation and evaluation", ("lab.generation", "lab.evaluation")),
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
    best = None  # the longest matching prefix wins (lab.core over lab, the prefix of every module)
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


MAX_LINES = 400  # a module longer than this is split along a seam into cohesive modules of its package


def test_every_module_is_at_most_max_lines_long():
    long = {str(p.relative_to(LAB.parent)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, (f"modules over {MAX_LINES} lines (split each along a natural seam into modules of its "
                      f"package): " + ", ".join(f"{p} ({n})" for p, n in sorted(long.items())))


def test_no_private_name_is_imported_across_modules():
    bad = [f"{MODULES[m].relative_to(LAB.parent)}:{line} takes {n} from {t}"
           for m in MODULES for t, names, line in imports(m) for n in names if n.startswith("_") and t != m]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def layer_line(markup: str = "`") -> str:
    """The layers bottom to top as the README's "The code" and lab/__init__.py's docstring state them."""
    return " < ".join(" ".join(f"{markup}{p.removeprefix('lab.') if p != 'lab' else 'lab'}{markup}" for p in prefixes)
                      for _, prefixes in LAYERS)


def test_the_readme_and_the_package_docstring_state_this_layer_map():
    readme = (LAB.parent / "README.md").read_text()
    code = readme[readme.index("## The code"):readme.index("\n## ", readme.index("## The code") + 1)]
    assert layer_line() in code, f"README's 'The code' must state the layers of LAYERS:\n{layer_line()}"
    import lab

    assert layer_line("") in lab.__doc__, f"lab/__init__.py's docstring must state the layers of LAYERS:\n{layer_line('')}"


# The config's top-level sections: a subscript by one of these names below the config layer reads a config.
SECTIONS = ("data", "loader", "quantizer", "tokenizer", "loss", "optim", "trainer", "eval", "resolved", "presets",
            "tokenizer_train", "generator", "head", "correction", "generator_loss", "sample", "sweep", "report")
# The sections with a typed view (lab/core/settings.py; ``trainer``: its Placement): a parameter by one of these
# names typed as a mapping takes the section itself. (The open nodes, ``quantizer`` and the like, are a component's
# keyword arguments, and stay mappings.)
TYPED = ("loader", "loss", "optim", "trainer", "eval", "sample", "generator_loss", "tokenizer_train")
# Not readers: the config's own plain helpers (to_dict, save_config: convert and write one, read nothing in it), and
# SampleOptions' ``cfg``, the 0.1 name of ``guidance`` (a number, until 0.2).
NOT_READERS = {("lab.core.registry", "to_dict"), ("lab.core.registry", "save_config"),
               ("lab.generation.sampling", "__post_init__")}


def config_readers(module: str) -> list[str]:
    """Where ``module`` takes a config mapping: a parameter named cfg / config, a parameter named after a section and
    typed as a mapping (``trainer: dict``), or a subscript or ``.get`` by a section name."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if (module, getattr(node, "name", "")) in NOT_READERS:
                continue
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs:
                if arg.arg in ("cfg", "config", "conf"):
                    out.append(f"line {node.lineno}: parameter {arg.arg}")
                elif arg.arg in TYPED and arg.annotation is not None and \
                        ast.unparse(arg.annotation).split("[")[0] in ("dict", "Mapping", "DictConfig"):
                    out.append(f"line {node.lineno}: parameter {arg.arg}: {ast.unparse(arg.annotation)} (a section)")
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in SECTIONS:
            out.append(f"line {node.lineno}: [{node.slice.value!r}]")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in SECTIONS):
            out.append(f"line {node.lineno}: .get({node.args[0].value!r})")
    return out


def test_lower_layers_take_plain_arguments_not_the_config():
    """Below lab.config no module takes a config mapping: the stages hand them built components and the typed
    sections of lab/core/settings.py (nor does any import lab.config)."""
    top = layer_of("lab.config")
    below = [m for m in MODULES if layer_of(m) < top]
    bad = [m for m in below if any(t == "lab.config" for t, _, _ in imports(m))]
    assert not bad, f"modules below the config layer that import lab.config: {bad}"
    readers = {m: r for m in below if (r := config_readers(m))}
    assert not readers, f"modules below the config layer that take a config mapping: {readers}"


@pytest.mark.parametrize("old", sorted(__import__("lab").MOVED))
def test_the_flat_module_paths_of_0_1_are_aliases_of_the_new_homes(old):
    import lab

    alias = importlib.import_module(f"lab.{old}")
    home = importlib.import_module(lab.MOVED[old])
    assert alias is home and home.__spec__.name == lab.MOVED[old]


def test_the_0_1_aliases_go_at_0_2():
    """The flat paths of 0.1 and the renamed keys are read "until 0.2": this fails when the version gets there with
    them still in place (lab.MOVED, lab.config.migrate.RENAMED_KEYS)."""
    import lab
    from lab.config.migrate import RENAMED_KEYS

    major, minor = (int(x) for x in lab.__version__.split(".")[:2])
    if (major, minor) >= (0, 2):
        assert not lab.MOVED and not RENAMED_KEYS, "0.2: remove lab.MOVED's aliases and the 0.1 key names"
