"""The package's floors hold, read from the source (every import, module-level or inside a
function):

- the library floor (ops, triton, losses, u2pl, mixing, utils, reference, base, ...) never imports
  the training floor (train, models, data and the commands built on them);
- the kernel layer (triton) imports only itself and the bottom floor (base), which imports nothing;
- reference is the oracle: of the library, only the ops' backend dispatch reaches it;
- no module imports itself back through others (no cycles)."""

import ast
import glob
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "semiseg_fast")
TRAINING_FLOOR = (
    "train",
    "models",
    "data",
    "depth",
    "eval",
    "pseudo_label",
    "select_labels",
    "experiments",
    "pretrain",
    "tools",
)


def _module_name(path):
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules():
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                out[_module_name(os.path.join(folder, f))] = os.path.join(folder, f)
    return out


MODULES = _modules()


def _imports(name, path):
    """Modules of the package that ``name`` imports; ``from pkg import sub`` counts as ``pkg.sub``."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("semiseg_fast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("semiseg_fast"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")}
            found |= subs if len(subs) == len(node.names) else subs | {target}
    return found - {name}


def _is_module(name):
    """A Python module of the package, or a compiled extension (semiseg_fast._C)."""
    folder = os.path.join(os.path.dirname(ROOT), *name.split(".")[:-1])
    return name in MODULES or bool(glob.glob(os.path.join(folder, name.split(".")[-1] + ".*so")))


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(name):
    parts = name.split(".")
    return "training" if len(parts) > 1 and parts[1] in TRAINING_FLOOR else "library"


def _under(name, *packages):
    return any(name == f"semiseg_fast.{p}" or name.startswith(f"semiseg_fast.{p}.") for p in packages)


def test_the_graph_is_read():
    assert "semiseg_fast.base" in GRAPH["semiseg_fast.triton._common"]
    assert "semiseg_fast.train.methods" in GRAPH["semiseg_fast.train.loop"]


def test_the_library_floor_never_imports_the_training_floor():
    bad = [
        (a, b) for a, targets in GRAPH.items() for b in targets if _floor(a) == "library" and _floor(b) == "training"
    ]
    assert not bad, bad


def test_the_kernel_layer_imports_only_itself_and_the_bottom_floor():
    bad = [
        (a, b)
        for a, targets in GRAPH.items()
        if _under(a, "triton")
        for b in targets
        if not _under(b, "triton", "base")
    ]
    assert not bad, bad
    bottom = [(a, b) for a, targets in GRAPH.items() if _under(a, "base") for b in targets if not _under(b, "base")]
    assert not bottom, bottom


def test_reference_is_the_oracle_only():
    bad = [
        (a, b)
        for a, targets in GRAPH.items()
        for b in targets
        if _under(b, "reference") and _floor(a) == "library" and not _under(a, "ops", "reference")
    ]
    assert not bad, bad


def test_no_import_cycles():
    # Tarjan's strongly connected components over the module graph
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("package", ["semiseg_fast.ops", "semiseg_fast.losses", "semiseg_fast.u2pl"])
def test_packages_exist(package):
    assert package in MODULES  # the rules above are about real modules, not typos
