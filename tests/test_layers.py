"""The layer rule, read from the real import graph (every import, also those inside functions).

unlearn (the method) < eval, toyworld < pipelines (orchestration): a lower layer never imports a
higher one, and no package has an import cycle among its modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANK = {"unlearn": 0, "eval": 1, "toyworld": 1, "pipelines": 2}


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for pkg in RANK:
        for f in (root / pkg).rglob("*.py"):
            mods[".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")] = f
    return mods


def _graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = _modules(root)
    edges: dict[str, set[str]] = {}
    for name, f in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        resolved = set()
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                resolved.add(t)
        edges[name] = resolved
    return edges


def test_lower_layers_never_import_higher_ones():
    bad = [f"{a} imports {b}" for a, targets in _graph().items() for b in targets
           if RANK[b.split(".")[0]] > RANK[a.split(".")[0]]]
    assert not bad, "layer rule broken:\n" + "\n".join(sorted(bad))


def test_no_import_cycles_inside_a_package():
    edges = _graph()
    # A package __init__ re-exporting its children makes a trivial parent<->child loop; skip those nodes.
    edges = {a: {b for b in t if b not in RANK} for a, t in edges.items() if a not in RANK}
    color: dict[str, int] = {}
    cycles = []

    def visit(u, stack):
        color[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if v.split(".")[0] != u.split(".")[0]:
                continue
            if color.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v not in color:
                visit(v, stack)
        stack.pop()
        color[u] = 2

    for m in sorted(edges):
        if m not in color:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_rule_catches_a_violation(tmp_path):
    """The check is not vacuous: a planted `unlearn -> pipelines` import is reported."""
    for pkg, body in (("unlearn", "import pipelines.run_folder\n"), ("pipelines", "")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "unlearn" / "method.py").write_text("def f():\n    from pipelines.run_folder import pin_config\n")
    (tmp_path / "pipelines" / "run_folder.py").write_text("")
    assert _graph(tmp_path)["unlearn.method"] == {"pipelines.run_folder"}


def test_the_architecture_doc_names_every_orchestration_module():
    """docs/architecture.md's `pipelines/` tree stays the floor plan: every sub-package has its line and every
    module is named on it (a subcommand by its command name), so a module added or moved without the doc fails."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    tree = doc.split("## `pipelines/` by job", 1)[1].split("## The data path", 1)[0]
    lines = {ln.split()[1]: ln for ln in tree.splitlines() if ln.startswith(("├── ", "└── "))}
    missing = []
    for f in sorted((ROOT / "pipelines").rglob("*.py")):
        rel = f.relative_to(ROOT / "pipelines")
        if len(rel.parts) == 1:
            continue
        line = lines.get(f"{rel.parts[0]}/")
        named = f.stem.replace("_", "-") if rel.parts[:2] == ("cli", "commands") else f.name
        if line is None or (f.name != "__init__.py" and named not in line):
            missing.append(str(rel))
    assert not missing, "docs/architecture.md does not name: " + ", ".join(missing)
