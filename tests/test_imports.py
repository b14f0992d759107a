"""The package's import graph: no cycles anywhere (lazy imports inside functions count too), nothing imports
upward (attention/kv/models <- modes <- decode <- parallel <- engine <- harness and the jobs), `kv/` imports
nothing of the package, and the runtime imports nothing from the evaluations (ruler/, babilong/)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "star_runtime"

# lower layers first; a module may import its own layer or lower ones, never a higher one
LAYERS = [
    {"errors", "pdl", "progress", "staging"},
    {"config"},
    {"fused", "prompts", "sampling", "attention", "kv", "models"},
    {"modes"},
    {"decode", "table_step"},
    {"parallel"},
    {"engine"},
    {"harness", "finetune", "infer", "needle", "cli", "serve", "__init__"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, known: set[str] | None = None) -> set[str]:
    """Every module of the project this file imports, at top level or inside functions. `from pkg import x`
    counts as importing pkg.x when that is a module (``known``), else as importing pkg."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if known is not None and sub in known else target)
    return {m for m in out if m.split(".")[0] in ("star_runtime", "ruler", "babilong")}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {mod: {m for m in imports_of(path, set(files)) if m in files and m != mod} for mod, path in files.items()}


def top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(mod: str) -> int:
    for i, names in enumerate(LAYERS):
        if top(mod) in names:
            return i
    raise AssertionError(f"{mod} is in no layer of this test; add it to LAYERS")


def test_no_import_cycles():
    g = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    # a package's __init__ importing its own submodules is not a cycle of modules
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_imports_upward():
    bad = [(a, b) for a, deps in graph().items() for b in deps if layer(b) > layer(a)]
    assert not bad, "upward imports (module -> imported): " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_kv_imports_nothing_of_the_package():
    bad = [(a, b) for a, deps in graph().items() if top(a) == "kv" for b in deps if top(b) != "kv"]
    assert not bad, bad


def test_runtime_imports_no_evaluation():
    bad = [(module_name(p), m) for p in PKG.rglob("*.py") for m in imports_of(p) if m.split(".")[0] != "star_runtime"]
    assert not bad, bad


def test_babilong_does_not_reach_into_ruler():
    bad = [(module_name(p), m) for p in (ROOT / "babilong").rglob("*.py") for m in imports_of(p)
           if m.split(".")[0] == "ruler"]
    assert not bad, bad


@pytest.mark.parametrize("mod,dep", [("star_runtime.modes.star", "star_runtime.modes.base"),
                                     ("star_runtime.decode", "star_runtime.attention.merge"),
                                     ("star_runtime.parallel.worker", "star_runtime.modes")])
def test_the_check_sees_real_imports(mod, dep):
    """Guards the test itself: imports known to exist are in the graph it checks."""
    assert dep in graph()[mod]
