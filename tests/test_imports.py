"""The top-level packages import one way only (docs/design.md, "Import order"): each from those
before it in ORDER, never from one after it, and no circle between packages.

Imports are read from the source with ``ast`` at every level, inside functions too: ``import X``,
``from X import y``, relative imports (resolved), and ``importlib.import_module("X")`` with a
literal name.
"""

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("simulator", "policy", "data", "eval", "train")
TOP = ("benchmarks", "notebooks", "tests")  # above every package: they may import any, none imports them


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at ``path``, the module ``module``."""
    parts = module.split(".")
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def package_imports(root: Path, packages=ORDER) -> list[tuple[str, int, str, str]]:
    """(file, line, importing package, imported package) of every import, in the files of
    ``packages`` under ``root``, of another top-level package of ours."""
    ours = set(ORDER) | set(TOP)
    out = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            for line, name in imported_modules(path, ".".join(rel.with_suffix("").parts)):
                target = name.split(".")[0]
                if target in ours and target != package:
                    out.append((str(rel), line, package, target))
    return out


def order_violations(root: Path) -> list[str]:
    """One line per import against ORDER, naming the file, the line and the two packages."""
    rank = {p: i for i, p in enumerate(ORDER)} | {p: len(ORDER) for p in TOP}
    return [f"{file}:{line}: {src} imports {dst}, which stands above it in {' -> '.join(ORDER)}"
            for file, line, src, dst in package_imports(root) if rank[dst] > rank[src]]


def package_graph(root: Path) -> dict[tuple[str, str], str]:
    """(importing package, imported package) -> the first import that draws that arrow, "file:line"."""
    arrows = {}
    for file, line, src, dst in package_imports(root):
        arrows.setdefault((src, dst), f"{file}:{line}")
    return arrows


def circles(arrows: dict[tuple[str, str], str]) -> list[list[str]]:
    return sorted(nx.simple_cycles(nx.DiGraph(list(arrows))))


def test_each_package_imports_only_from_those_before_it():
    assert not (found := order_violations(ROOT)), "\n".join(found)


def test_no_import_circle_between_packages():
    arrows = package_graph(ROOT)
    found = [" -> ".join(f"{a} ({arrows[a, b]})" for a, b in zip(c, c[1:] + c[:1])) + f" -> {c[0]}"
             for c in circles(arrows)]
    assert not found, "\n".join(found)


def test_the_checks_catch_violations_and_circles(tmp_path):
    """A small tree with an import against the order inside a function, one through importlib,
    one at module level, and a relative import that stays inside its package."""
    files = {
        "simulator/__init__.py": "",
        "simulator/env.py": "import torch\n\n\ndef f():\n    from data.clips import Normalizer\n",
        "data/__init__.py": "",
        "data/clips.py": "from simulator import keys\n",
        "data/sub/m.py": "import importlib\nfrom ..clips import x\nimportlib.import_module('train.cli')\n",
        "eval/report.py": "import train.demo as demo\n",
        "train/demo.py": "from eval import report\nfrom data.clips import y\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert [line.split(", which")[0] for line in order_violations(tmp_path)] == [
        "simulator/env.py:5: simulator imports data",
        "data/sub/m.py:3: data imports train",
        "eval/report.py:1: eval imports train",
    ]
    assert (2, "data.clips") in imported_modules(tmp_path / "data/sub/m.py", "data.sub.m")  # resolved
    arrows = package_graph(tmp_path)
    assert sorted(sorted(c) for c in circles(arrows)) == [["data", "simulator"], ["data", "train"], ["eval", "train"]]
    assert arrows["simulator", "data"] == "simulator/env.py:5"
