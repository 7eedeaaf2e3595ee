"""The package's layers, read from its imports (ast): no import cycles between modules, the
folders form a directed acyclic graph, and nothing imports the stage scripts, the command
line, the launcher or the study from below. Imports under ``if TYPE_CHECKING:`` are type
hints, not dependencies, and are left out."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "pipeline"
TOP = ("cli", "stage1_teacher", "stage2_augment", "stage3_distill", "stage4_evaluate")  # nothing imports these
# who may import a layer that sits above the library
ALLOWED_IMPORTERS = {"launch": {"launch", "study", "cli"}, "study": {"study", "cli"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at any depth (function bodies included)."""
    found: set[str] = set()

    def visit(node) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "pipeline":
                for alias in child.names:  # `from pipeline.distill import losses` imports a module
                    sub = f"{child.module}.{alias.name}"
                    found.add(sub if sub in modules else child.module)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != "pipeline"}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def layer(module: str) -> str:
    """pipeline.distill.losses -> distill; pipeline.config -> config."""
    return module.split(".")[1] if module != "pipeline" else "pipeline"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert len(graph) > 40  # the walk saw the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_folders_depend_on_each_other_one_way():
    folders: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        folders.setdefault(layer(module), set()).update(layer(d) for d in deps if layer(d) != layer(module))
    cycle = find_cycle(folders)
    assert cycle is None, "folders import each other: " + " -> ".join(cycle)


def test_nothing_imports_stage_scripts_cli_launcher_or_study_from_below():
    wrong = []
    for module, deps in import_graph().items():
        for dep in deps:
            if layer(dep) in TOP:
                wrong.append(f"{module} imports {dep}")
            allowed = ALLOWED_IMPORTERS.get(layer(dep))
            if allowed is not None and layer(module) not in allowed:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, wrong


HEAVY = ("transformers", "datasets", "sklearn", "scipy", "torch._dynamo", "deepspeed", "onnxruntime")


def test_the_command_line_imports_no_model_data_or_metric_library_before_it_needs_one():
    """``crild`` answers ``--help``, a bad configuration or a run with nothing left to do
    without the libraries that take seconds to import (each is imported where it is used):
    importing the command line, the launcher and the study pulls in none of them."""
    import subprocess
    import sys

    code = ("import sys, pipeline.cli, pipeline.launch.local, pipeline.launch.preflight, pipeline.study.command\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [], f"imported at start: {proc.stdout.strip()}"


def test_the_runner_loads_torch_only_for_a_stage_that_runs():
    """``crild run`` with every stage complete, and ``crild status``, need neither torch nor
    the start-up checks: the launcher imports them when a stage is about to run."""
    import subprocess
    import sys

    code = "import sys, pipeline.launch.local, pipeline.launch.status\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


@pytest.mark.parametrize("argv", [
    ["--help"], ["teacher", "--help"], ["study", "--help"],
    ["run", "{bad}"], ["config", "{bad}"], ["run", "{bad}", "--only", "nonsense"], ["submit", "{bad}"],
    ["status", "{good}"],
])
def test_help_and_configuration_errors_answer_without_torch(tmp_path, argv):
    """Help, a configuration's mistakes and a run's status are answered before torch is
    imported (a second on every call): the term registry, the output checks, the DeepSpeed
    file reader and the checkpoint folders that these read load no torch."""
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("task: sst2\nseed: not-a-number\n")
    good = tmp_path / "good.yaml"
    good.write_text(f"output_dir: {tmp_path / 'run'}\n")
    argv = [a.format(bad=bad, good=good) for a in argv]
    code = ("import sys\nfrom pipeline.cli import main\ncode = 0\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code\n"
            "print(code, 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    code, torch_loaded = proc.stderr.split("\n")[-2].split()
    assert code == ("2" if str(bad) in argv else "0"), proc.stderr
    assert torch_loaded == "False", f"crild {' '.join(argv)} imported torch"


def test_no_two_test_modules_share_a_name():
    """tests/ has no __init__.py files, so pytest imports each test file by its name alone: a
    second file of the same name in another folder stops the whole collection (an "import file
    mismatch", which failed a CI run after 20 minutes)."""
    seen: dict[str, Path] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path.relative_to(REPO)} and {seen[path.name].relative_to(REPO)}"
        seen[path.name] = path
