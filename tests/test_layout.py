"""The layout of the design card: the six algorithm scripts and common.py at the top, the plumbing
in lib/, the experiments in experiments/; imports run one way (experiments → scripts → common →
lib), with no cycle and no deferred import that hides one (fast: reads files only)."""
import ast, glob, os

from conftest import ROOT

SCRIPTS = {"sft", "reward_model", "ppo", "rloo", "grpo", "dpo"}
LAYER = {"experiments": 3, "scripts": 2, "common": 1, "lib": 0}  # higher imports lower only


def modules():
    """{module name: path} of the project's code (tests aside): the top level, lib/,
    experiments/, bench/ (its files import each other by bare name) and examples/."""
    found = {}
    for path in glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "bench",
                                                                               "*.py")):
        found[os.path.basename(path)[:-3]] = path
    for pkg in ("lib", "experiments"):
        for path in glob.glob(os.path.join(ROOT, pkg, "*.py")):
            name = os.path.basename(path)[:-3]
            found[pkg if name == "__init__" else f"{pkg}.{name}"] = path
    found["examples.trl_bridge"] = os.path.join(ROOT, "examples", "trl_bridge.py")
    return found


def imports(path, names):
    """The project modules a file imports, wherever the import statement is."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in names:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in names}
    return out


def layer(name):
    if name.startswith("lib"):
        return "lib"
    if name == "common":
        return "common"
    if name in SCRIPTS:
        return "scripts"
    return "experiments" if name.startswith("experiments") else None


def test_the_top_level_is_the_design_cards():
    top = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert top == {f"{s}.py" for s in SCRIPTS} | {"common.py"}


def test_no_import_cycle_and_no_deferred_import():
    names = modules()
    graph = {m: imports(p, names) - {m} for m, p in names.items()}
    for m, p in names.items():
        text = open(p, encoding="utf-8").read()
        assert "import_module(" not in text and "__import__(" not in text, \
            f"{os.path.relpath(p, ROOT)} imports by name: the graph cannot see it"

    def cycle(node, path):  # depth first: a module met again on the current path
        if node in path:
            return path[path.index(node):] + [node]
        for nxt in sorted(graph[node]):
            found = cycle(nxt, path + [node])
            if found:
                return found
        return None
    for m in graph:
        found = cycle(m, [])
        assert found is None, " → ".join(found)


def test_layers_import_downward_only():
    """lib never reaches common, a script or an experiment; common only lib; a script only
    common; nothing imports an experiment but experiments (and tests)."""
    names = modules()
    for m, p in names.items():
        mine = layer(m)
        for dep in imports(p, names):
            theirs = layer(dep)
            if mine is None or theirs is None:
                continue  # bench/ and examples/ sit beside the layers
            assert LAYER[theirs] < LAYER[mine] or theirs == mine != "scripts", (m, dep)
            if mine == "scripts":
                assert dep == "common", f"{m}.py imports {dep}: scripts import common only"
            if mine == "common":
                assert theirs == "lib"
        if mine is None:
            for dep in imports(p, names):
                assert layer(dep) != "experiments" or m == "grad_variance", (m, dep)


def test_the_cycle_check_can_fail(tmp_path):
    """The checks see an import inside a function, and a cycle through it."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    from a import x\n")
    names = {"a": str(a), "b": str(b)}
    assert imports(str(a), names) == {"b"} and imports(str(b), names) == {"a"}
