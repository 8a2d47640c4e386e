"""The package's layers, read from the imports themselves: nothing imports a layer above its own, the serving half
(artifacts, engine, report) never stands on training or tasks, no import circles, and lth's own modules are
imported at the top of a module (never inside a function to dodge a circle), except by the command layer."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Bottom to top; a module may import its own layer and the ones below. Layers on one rank are siblings that do
# not import each other.
RANKS = {"core": 0, "tasks": 1, "run": 1, "report": 2, "artifacts": 3, "engine": 4, "search": 5, "": 6}
NEVER = {"artifacts": {"search", "tasks"}, "engine": {"search", "tasks"}, "report": {"search", "tasks"}}


def layer(module: str) -> str:
    """'lth.core.masks' -> 'core'; the package root and cli.py are the top layer ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else ""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The lth modules an import statement reads (a name imported from a package counts as its module when there
    is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "lth"]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + (node.module.split(".") if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "lth":
        return []
    found = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        is_module = (SRC / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
            (SRC / Path(*candidate.split(".")) / "__init__.py").is_file()
        found.append(candidate if is_module else target)
    return found


def imports(source: str, module: str, is_package: bool) -> tuple[list[str], list[str]]:
    """(lth modules imported at module level, those imported inside a function or class body)."""
    tree = ast.parse(source)
    top, inner = [], []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (top if node.col_offset == 0 else inner).extend(resolve(module, is_package, node))
    return top, inner


def graph() -> dict[str, tuple[list[str], list[str]]]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        found[name] = imports(path.read_text(), name, path.name == "__init__.py")
    return found


def violations(edges: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    wrong = []
    for module, (top, inner) in edges.items():
        here = layer(module)
        for target in top + inner:
            there = layer(target)
            if there == here or target == "lth.core.version":
                continue
            if RANKS[there] > RANKS[here] or RANKS[there] == RANKS[here] or there in NEVER.get(here, ()):
                wrong.append(f"{module} imports {target} ({here or 'top'} -> {there or 'top'})")
        if inner and here:
            wrong.append(f"{module} imports {', '.join(sorted(set(inner)))} inside a function")
    return wrong


def circles(edges: dict[str, tuple[list[str], list[str]]]) -> list[list[str]]:
    """Every import circle among lth's modules (module-level imports; a package counts as its __init__)."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in edges.get(module, ([], []))[0]:
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module, [module])
    return found


def test_no_layer_imports_one_above_it_and_lth_imports_sit_at_the_top():
    assert violations(graph()) == []


def test_there_is_no_import_circle():
    assert circles(graph()) == []


@pytest.mark.parametrize("module, source, complaint", [
    ("lth.core.masks", "from ..search.train import finetune\n", "core -> search"),
    ("lth.engine.sparse", "from ..tasks import build_task\n", "engine -> tasks"),
    ("lth.tasks.glue", "from ..run.settings import FindSettings\n", "tasks -> run"),
    ("lth.artifacts.ticket", "def f():\n    from ..core import masks\n", "inside a function"),
])
def test_the_rule_fails_on_a_planted_import(module, source, complaint):
    edges = graph()
    edges[module] = imports(source, module, False)
    assert any(complaint in line for line in violations(edges)), complaint


def test_a_planted_circle_is_found():
    edges = graph()
    edges["lth.core.errors"] = (edges["lth.core.errors"][0] + ["lth.core.files"], [])
    assert any("lth.core.errors" in circle and "lth.core.files" in circle for circle in circles(edges))


def kind_tests(source: str, check_names: bool) -> list[int]:
    """Lines comparing a unit's or record's kind with a literal (`unit.kind == "trunk"`, `r["kind"] != "full"`,
    and, with `check_names`, `kind == "imp"`)."""
    def is_kind(node) -> bool:
        attribute = isinstance(node, ast.Attribute) and node.attr == "kind"
        key = isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "kind"
        return attribute or key or (check_names and isinstance(node, ast.Name) and node.id == "kind")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_kind(s) for s in sides) and any(isinstance(s, ast.Constant) and isinstance(s.value, str)
                                                      for s in sides):
                found.append(node.lineno)
    return found


def test_only_the_kinds_table_says_what_a_kind_does():
    """Every per-kind behaviour is a field of its row in run.kinds.KINDS: no code of the run or the search
    compares a unit's kind with a name."""
    modules = [p for folder in ("run", "search") for p in sorted((SRC / "lth" / folder).glob("*.py"))]
    found = {str(p.relative_to(SRC)): lines for p in modules if (lines := kind_tests(p.read_text(), True))}
    assert found == {}
    assert kind_tests('if unit.kind == "standard":\n    pass\n', False) == [1]
    assert kind_tests('x = [r for r in rows if r["kind"] != "full"]\n', False) == [1]


def test_every_kind_has_a_complete_row():
    from lth.run.kinds import CHAIN, INIT, KINDS, REINIT, REWIND
    from lth.run.settings import BASELINES
    from lth.search.masking import Masks

    sources = Masks.__init__.__code__.co_names  # the methods Masks maps its sources to
    for name, row in KINDS.items():
        assert row.start in (REWIND, INIT, REINIT, CHAIN), name
        assert row.levels in ("every", "dense", "judged", "chain", "none"), name
        assert row.seeds in ("search", "others", "all"), name
        assert row.needs in (None, "previous level", "level mask", "previous weights"), name
        assert row.chain == (row.start == CHAIN), name
    assert [name for name, row in KINDS.items() if row.search] == ["trunk"]
    assert BASELINES == ("random-prune", "random-reinit", "oneshot", "standard")
    assert {row.mask for row in KINDS.values()} == {"level", "dense", "random", "oneshot", "chain", "source"}
    assert "sources" in sources
