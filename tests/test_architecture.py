"""The structure docs/architecture.md promises: no import cycles, no private names across modules, and a
library that does not import its experiments or its command line."""
import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gan2flow"


def _modules():
    """{dotted name: parsed module} for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _imports(name, tree, modules):
    """(imported module, names taken from it) for every import in the module, function-local ones included."""
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            result.extend((alias.name, ()) for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    result.append((submodule, ()))
                elif node.module in modules:
                    result.append((node.module, (alias.name,)))
    return result


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {name: {target for target, _ in _imports(name, tree, modules)
                    if target != name and target != "gan2flow"} for name, tree in modules.items()}
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_takes_another_modules_private_names():
    modules = _modules()
    offenders = []
    for name, tree in modules.items():
        aliases = {}
        for target, taken in _imports(name, tree, modules):
            offenders.extend(f"{name} imports {target}.{item}" for item in taken
                             if item.startswith("_") and not item.startswith("__"))
        for node in ast.walk(tree):  # `from gan2flow import flows as _flows` then `_flows._private`
            if isinstance(node, ast.ImportFrom) and node.module == "gan2flow":
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"gan2flow.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] in modules and aliases[node.value.id] != name
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offenders.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_import_gan2flow_leaves_out_the_experiments_and_the_cli():
    code = ("import sys, gan2flow; print(sorted(m for m in sys.modules if m.startswith('gan2flow.experiments') "
            "or m == 'gan2flow.cli'))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.strip().splitlines()[-1]
    assert output == "[]", output
