"""The package's shape (docs/architecture.md): no import cycles between its modules, lazy imports inside functions
included; no arrow back up between its folders; and test modules that pytest can tell apart."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "deploy" / "flops_mlops"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules of ours that ``path`` imports (relative imports, at any depth of the file)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" for a in node.names} if node.module is None else {target}
    return found


def test_no_module_imports_itself_back():
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    graph = {name: {d for d in deps if d in graph} for name, deps in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return path + [start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
        return None

    cycles = [" -> ".join(c) for name in sorted(graph) if (c := cycle_from(name))]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert "flops_mlops.fl.events" in graph["flops_mlops.fl.aggregator"]  # the check sees real edges


# The folders from the bottom up: a module imports its own folder's modules and those of the folders below it,
# never one above (nor another target: each target stands on the concerns alone).
LAYERS = [
    {"processes", "bundled"},  # this machine's processes and private files; the folders shipped beside the code
    {"rendered"},  # files that `render` writes or checks
    {"configuration"},
    {"images"},  # root filesystems, wheels per platform, OCI image indexes (no Docker daemon)
    {"stores"},
    {"tracking"},
    {"fl"},
    {"serving"},
    {"backup"},  # a tenant's data out of its stores and back (backup, restore)
    {"native", "compose", "oakestra", "pyinfra"},  # the four targets
    {"cli"},
]


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(package)"


def test_no_folder_imports_one_above_it_or_another_target():
    rank = {folder: i for i, layer in enumerate(LAYERS) for folder in layer}
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    folders = {folder_of(name) for name in graph} - {"(package)"}
    assert folders == set(rank), f"folders without a layer, or layers without a folder: {folders ^ set(rank)}"
    wrong = sorted(f"{name} -> {dep}" for name, deps in graph.items() for dep in deps
                   if dep in graph and folder_of(name) in rank and folder_of(dep) in rank
                   and folder_of(name) != folder_of(dep) and rank[folder_of(dep)] >= rank[folder_of(name)])
    assert not wrong, "imports that point up, or from one target into another:\n" + "\n".join(wrong)
    assert "flops_mlops.tracking.server" in graph["flops_mlops.native.stack"]  # the check sees real edges


def test_test_modules_have_names_of_their_own():
    """pytest imports test modules by their file name (tests/ folders are not packages): two with one name
    stop the whole suite at collection."""
    tests = PACKAGE.parents[1] / "tests"
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}


def test_the_architecture_page_names_every_folder_and_top_level_module():
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    parts = {f"`{p.name}/`" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    parts |= {f"`{p.name}`" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert {part for part in parts if part not in page} == set()
