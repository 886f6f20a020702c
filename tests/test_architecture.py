"""The package's import graph has no cycles, and test helpers stay out of the package.

Every `import` and `from ... import` in resnet_jax counts, at module level and inside
functions alike: a lazy import inside a function is still a dependency, and it is how a
cycle hides (it only breaks at call time, and only in some orders). Imports under
`if TYPE_CHECKING:` count too: they state the same dependency. `from resnet_jax.x import y`
is an edge to `resnet_jax.x.y` when y is a submodule, else to `resnet_jax.x` (whose
`__init__` re-exports count as its edges).
"""

import ast
import pathlib
import re
import tomllib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "resnet_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules that module `name` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import resnet_jax.a.b` depends on resnet_jax.a.b; keep the longest known prefix.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    edges = {name: sorted(targets) for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_names_the_cycle():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) is None


def test_graph_sees_function_level_and_submodule_imports():
    graph = import_graph()
    # `from resnet_jax.data import pipeline` inside a function is an edge to the submodule.
    assert "resnet_jax.training.loop" in graph
    assert all(target.startswith("resnet_jax") for targets in graph.values() for target in targets)
    assert any("resnet_jax.data.pipeline" in targets for targets in graph.values())


def test_package_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_test_helpers_in_the_package():
    offenders = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*testing*.py")]
    assert not offenders, f"test helpers belong under tests/, not in the package: {offenders}"


# Every command line module has its own pair (console scripts and tests call them by module).
PER_MODULE = {"main", "build_parser"}
# Names that several modules define on purpose, each with exactly the modules that may.
SHARED = {
    # One reference per source (numerics.SOURCES); numerics.build_reference picks the source.
    "build_reference": {"convert.keras_reference", "convert.numerics", "convert.timm",
                        "convert.torchvision"},
    "check_model_name": {"convert.timm", "convert.torchvision"},
    "preset_for": {"convert.timm", "convert.torchvision"},
    "published_files": {"convert.timm", "convert.torchvision"},
    # The Grain pipeline yields the tf.data pipeline's batches; grain_pipeline picks one.
    "create_train_iterator": {"data.grain_pipeline", "data.pipeline"},
    "create_eval_iterator": {"data.grain_pipeline", "data.pipeline"},
}  # fmt: skip


def top_level_names(source: str) -> set[str]:
    """The public functions and UPPER_CASE constants a module defines at top level; imports (an
    ``__init__``'s re-exports) define nothing."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = (n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            names.update(n for n in found if n.isupper())
    return {n for n in names if not n.startswith("_")} - PER_MODULE


def test_top_level_names_are_public_functions_and_constants():
    source = (
        "import os\nfrom m import F, g\nA = B = 1\nC: int = 2\nD, E = 3, 4\n_P = 5\nlow = 6\n"
        "Alias = int\n__all__ = []\ndef f():\n    X = 1\nasync def h(): ...\ndef _p(): ...\n"
        "def main(): ...\ndef build_parser(): ...\nclass K:\n    Z = 1\n"
    )
    assert top_level_names(source) == {"A", "B", "C", "D", "E", "f", "h"}


def test_one_name_per_concept():
    """No two modules share a file name, no two classes a name, and no two modules a public
    function or constant name (outside SHARED): `checkpoint`, `Source`, `resolve` or `MODES`
    must say which one it is without its package around it."""
    files: dict[str, list[str]] = {}
    classes: dict[str, list[str]] = {}
    defined: dict[str, set[str]] = {}
    for name, path in _modules().items():
        if path.name not in ("__init__.py", "__main__.py"):  # Python's names, not ours.
            files.setdefault(path.name, []).append(name)
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(name)
        for top in top_level_names(source):
            defined.setdefault(top, set()).add(name.removeprefix("resnet_jax."))
    assert {k: v for k, v in files.items() if len(v) > 1} == {}
    assert {k: v for k, v in classes.items() if len(v) > 1} == {}
    shared = {k: v for k, v in defined.items() if len(v) > 1}
    assert {k: sorted(v) for k, v in shared.items() if v != SHARED.get(k)} == {}
    stale = sorted(set(SHARED) - set(shared))
    assert not stale, f"{stale} is defined by one module only now: remove it from SHARED"


def test_every_command_line_is_a_console_script_and_runs_with_python_m():
    """`python -m resnet_jax.x` and the console script of pyproject.toml call the same main."""
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    targets = {target.split(":")[0]: target.split(":")[1] for target in scripts.values()}
    with_main_guard = {
        name
        for name, path in _modules().items()
        if 'if __name__ == "__main__":' in path.read_text()
    }
    assert set(targets) == with_main_guard
    for module, function in targets.items():
        tree = ast.parse(_modules()[module].read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, module


def _defined(path: pathlib.Path) -> set[str]:
    """What a module defines at top level: functions, classes, assignments and its __all__."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if "__all__" in names and isinstance(node.value, (ast.List, ast.Tuple)):
                names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return names


def test_readme_architecture_names_files_and_functions_that_exist():
    """Every file, class, `module.name`, `python -m` module and console script the README's
    Architecture section names exists where it says."""
    repo = PACKAGE.parent
    text = (repo / "README.md").read_text()
    section = text[text.index("## Architecture") :].split("\n## ")[0]
    modules = _modules()
    by_stem = {name.rpartition(".")[2]: path for name, path in modules.items()}
    scripts = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["scripts"]
    stale = []
    for token in re.findall(r"`([^`]+)`", section):
        if re.fullmatch(r"[\w*]+(/[\w*]+)*(\.py|/)", token):
            ok = any(any(root.glob(token.rstrip("/"))) for root in (PACKAGE, repo, repo / "tests"))
        elif token.startswith("python -m "):
            module = token.removeprefix("python -m ")
            ok = module in modules
        elif token.startswith("resnet-jax-"):
            ok = token in scripts
        elif re.fullmatch(r"[A-Z][a-z]\w*", token):  # A class: RunSpec.
            ok = any(token in _defined(path) for path in modules.values())
        elif re.fullmatch(r"\w+\.(json|jsonl|png)", token):
            continue  # A file a run writes (metrics.jsonl), not module.name.
        elif match := re.fullmatch(r"(\w+)\.(\w+)(\(\))?", token):
            module, name = match.group(1, 2)
            ok = module not in by_stem or name in _defined(by_stem[module])
        else:
            continue
        if not ok:
            stale.append(token)
    assert stale == []
