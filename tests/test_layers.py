"""The package's layers, checked on the source (ast): every `import` of an `unlearn` module anywhere in a file counts
(module level, inside functions, under TYPE_CHECKING); ``from unlearn.x import y`` counts ``unlearn.x`` and, when
``y`` is a module, ``unlearn.x.y``."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "unlearn"
TRAINING = ("unlearn.methods", "unlearn.train", "unlearn.loop", "unlearn.diffusion_train")
MODEL_CODE = ("unlearn.targets", "unlearn.methods", "unlearn.train", "unlearn.loop", "unlearn.metrics",
              "unlearn.evaluate", "unlearn.diffusion_train")  # fmt: skip
FRONT = ("unlearn.cli", "unlearn.commands", "unlearn.__main__")


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every unlearn module this file imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n.split(".")[0] != "unlearn":
                continue
            if n in MODULES:
                out.add(n)
    return out - {_module(path)}


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _under(mod: str, prefixes) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_metrics_and_training_never_import_each_other():
    for m, deps in GRAPH.items():
        if _under(m, ("unlearn.metrics",)):
            assert not {d for d in deps if _under(d, TRAINING)}, m
        if _under(m, TRAINING):
            assert not {d for d in deps if _under(d, ("unlearn.metrics",))}, m


def test_data_imports_no_model_code():
    for m, deps in GRAPH.items():
        if _under(m, ("unlearn.data",)):
            assert not {d for d in deps if _under(d, MODEL_CODE)}, m


def test_only_the_front_prints_or_exits():
    for m, p in MODULES.items():
        if _under(m, FRONT):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                assert not (isinstance(f, ast.Name) and f.id in ("print", "exit", "quit")), f"{m}:{node.lineno}"
                assert not (
                    isinstance(f, ast.Attribute) and f.attr == "exit" and getattr(f.value, "id", "") == "sys"
                ), f"{m}:{node.lineno}"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m, stack):
        state[m] = 1
        for d in sorted(GRAPH.get(m, ())):
            assert state.get(d) != 1, " -> ".join([*stack, m, d])
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
