"""The package's layers, read from its source: the core imports neither torch nor ray when it
loads, the building blocks (text, model, data) import no runtime, and no runtime imports another."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ray_sentiment"
RUNTIMES = {"train", "scoring", "serving", "stream", "report"}
BLOCKS = {"text", "model", "data"}
HEAVY = ("ray", "torch")
# Kept import paths of earlier versions: each only re-exports a runtime's names.
SHIMS = {"ray_sentiment.serve", "ray_sentiment.score"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, top_level_only: bool) -> set[str]:
    """What `name` imports (absolute names, third-party ones cut to their package); with
    `top_level_only`, only what runs when the module loads (not in functions, not TYPE_CHECKING)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    nodes = _top_level(tree.body) if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {_known(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            found |= {_known(f"{base}.{a.name}") if f"{base}.{a.name}" in MODULES else _known(base) for a in node.names}
    return found


def _top_level(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            yield from _top_level([*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])])


def _known(name: str) -> str:
    return name if name.startswith("ray_sentiment") else name.split(".")[0]


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 else "core"


def loaded_with(name: str) -> set[str]:
    """Every module imported, directly or through the package's own modules, when `name` loads."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        for child in imports(current, top_level_only=True) - seen:
            seen.add(child)
            if child in MODULES:
                todo.append(child)
    return seen


def test_every_module_of_the_package_is_in_a_known_layer():
    assert {layer(m) for m in MODULES} <= {"core", *RUNTIMES, *BLOCKS}


def test_the_core_loads_neither_torch_nor_ray_nor_a_runtime():
    for name in sorted(m for m in MODULES if layer(m) == "core" and m not in SHIMS):
        loaded = loaded_with(name)
        assert not loaded & set(HEAVY), f"{name} loads {sorted(loaded & set(HEAVY))}"
        runtimes = sorted(m for m in loaded if m in MODULES and layer(m) in RUNTIMES)
        assert not runtimes, f"{name} loads {runtimes}"


def test_each_runtimes_checks_load_neither_torch_nor_ray():
    # The CLI runs them before the runtime, so that a user error is refused in about a second.
    checks = sorted(m for m in MODULES if m.endswith(".checks"))
    assert {layer(m) for m in checks} == RUNTIMES
    for name in checks:
        assert not loaded_with(name) & set(HEAVY), f"{name} loads {sorted(loaded_with(name) & set(HEAVY))}"


def test_text_model_and_data_import_no_runtime():
    for name in sorted(m for m in MODULES if layer(m) in BLOCKS):
        runtimes = sorted(m for m in imports(name, top_level_only=False) if m in MODULES and layer(m) in RUNTIMES)
        assert not runtimes, f"{name} imports {runtimes}"


def test_no_runtime_imports_another():
    for name in sorted(m for m in MODULES if layer(m) in RUNTIMES):
        others = sorted(
            m for m in imports(name, top_level_only=False) if m in MODULES and layer(m) in RUNTIMES - {layer(name)}
        )
        assert not others, f"{name} imports {others}"


def test_the_package_has_no_import_cycle():
    graph = {m: {i for i in imports(m, top_level_only=False) if i in MODULES} for m in MODULES}

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " → ".join((*path, module))
        for child in graph[module]:
            visit(child, (*path, module))

    for module in graph:
        visit(module, ())


def test_the_import_paths_earlier_versions_documented_still_work():
    code = """
import sys
import ray_sentiment.stream, ray_sentiment.text, ray_sentiment.train
assert not {"ray", "torch"} & set(sys.modules), "importing a package loaded ray or torch"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # The names themselves, in this interpreter: a fresh one would spend seconds importing torch and Ray.
    from ray_sentiment import Predictor  # noqa: F401
    from ray_sentiment.score import score_parquet  # noqa: F401
    from ray_sentiment.serve import app_builder, build, start  # noqa: F401
    from ray_sentiment.stream import Broker, StreamRunner  # noqa: F401
    from ray_sentiment.text import tokenize
    from ray_sentiment.train import train  # noqa: F401

    assert tokenize(["Moved, not gone"]).to_pylist() == [["moved", "not", "gone"]]
