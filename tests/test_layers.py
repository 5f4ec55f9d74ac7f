"""The import layers of docs/architecture.md: no circle between modules, packages import only from below."""

import ast
import sys
from pathlib import Path

import dmjd

SRC = Path(dmjd.__file__).parent
# Bottom first; a package may import from its own layer's packages only where no circle results.
LAYERS = (
    ("dmjd", "dmjd.errors", "dmjd.outputs"),
    ("dmjd.masking", "dmjd.io", "dmjd.data", "dmjd.targets"),
    ("dmjd.config",),
    ("dmjd.models", "dmjd.losses"),
    ("dmjd.engine",),
    ("dmjd.eval", "dmjd.recipe"),
    ("dmjd.bench",),
    ("dmjd.cli", "dmjd.__main__"),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every dmjd module's imports of other dmjd modules, at any depth of the file (functions included)."""
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_circle_between_modules():
    graph, state, circles = _imports(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                circles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_every_package_has_a_layer_and_imports_only_from_below_or_beside():
    graph = _imports()
    assert {_package(m) for m in graph} <= set(RANK), "a new package needs its place in LAYERS"
    upward = [
        f"{module} -> {dep}" for module, deps in graph.items() for dep in deps if RANK[_package(dep)] > RANK[_package(module)]
    ]
    assert upward == []


def test_models_import_no_engine_and_data_no_config():
    graph = _imports()
    assert not {d for m, ds in graph.items() if m.startswith("dmjd.models") for d in ds if d.startswith("dmjd.engine")}
    assert not {
        d for m, ds in graph.items() if m.startswith("dmjd.data") for d in ds if d.startswith(("dmjd.config", "dmjd.engine"))
    }


def test_the_checker_sees_a_circle_and_a_function_level_import(tmp_path, monkeypatch):
    """The checks above cannot pass vacuously: a planted circle through a function-level import is found."""
    package = tmp_path / "dmjd"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("from dmjd.data.b import x\n")
    (package / "data" / "b.py").write_text("def x():\n    from dmjd.data import a\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", package)
    assert _imports()["dmjd.data.b"] == {"dmjd.data.a"}
    try:
        test_no_import_circle_between_modules()
    except AssertionError as err:
        assert "dmjd.data.a -> dmjd.data.b -> dmjd.data.a" in str(err)
    else:
        raise AssertionError("the planted circle was not found")
