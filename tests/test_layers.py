"""The packages' layers point down (docs/development.md, "Layout"): rewards/ and the math at the bottom, videoqa/, then actors/ and
learner/, then cluster/ (the runtime of a run), then commands/ on top. benchmarks/ and the fixtures (toy/) stay out
of the library layers. Read from the source's import statements (also those inside functions), so a lazy import
that points up fails here too.

Catches: a runtime module importing a command (e.g. cluster/ calling into commands.stages), a reward or the math
importing Ray-side plumbing, a library module importing a benchmark or a fixture."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"rewards": 0, "videoqa": 1, "actors": 2, "learner": 2, "cluster": 3, "commands": 4}
OUTSIDE = {"toy", "benchmarks"}  # fixtures and benchmarks: they may import the library, never the other way round
# The one allowed exception: the oracle judge (a stand-in judge for the synthetic task only) reads the synthetic
# task's own rule; it imports it lazily, so no other judge loads toy/.
ALLOWED = {("actors/judges.py", "toy")}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & (set(LAYER) | OUTSIDE)


def violations() -> list[str]:
    bad = []
    for package, rank in LAYER.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for target in imported_packages(path):
                if (rel, target) in ALLOWED:
                    continue
                if target in OUTSIDE and package != "commands":
                    bad.append(f"{rel} imports {target}/ (a fixture or benchmark) from a library layer")
                elif target in LAYER and LAYER[target] > rank:
                    bad.append(f"{rel} ({package}/, layer {rank}) imports {target}/ (layer {LAYER[target]})")
    return bad


def test_layers_point_down():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a runtime module that imports a command, even inside a function, is reported."""
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "x.py").write_text("def f():\n    from commands.stages import run_sft\n")
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "y.py").write_text("import toy.synthetic\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted(violations()) == [
        "cluster/x.py (cluster/, layer 3) imports commands/ (layer 4)",
        "rewards/y.py imports toy/ (a fixture or benchmark) from a library layer",
    ]
