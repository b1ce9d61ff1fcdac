"""The layer rules of ARCHITECTURE.md, read from the source: every `import` of a dla module, at module
level or inside a function, is an edge; the rules and the absence of cycles are checked on that graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# module prefix -> prefixes it must not import
FORBIDDEN = {
    "dla.models": ("dla.data", "dla.train", "dla.cli", "dla.experiment", "dla.build", "dla.analysis",
                   "dla.rundir", "dla.sweep", "dla.report"),
    "dla.data": ("dla.models", "dla.train", "dla.cli", "dla.experiment", "dla.build", "dla.analysis"),
    "dla.train": ("dla.analysis", "dla.cli", "dla.experiment", "dla.sweep", "dla.report", "dla.kinds", "dla.build"),
    "dla.rundir": ("dla.train", "dla.config", "dla.experiment", "dla.build"),
    "dla.io": ("dla",),
    "dla.attacks": ("dla",),
    "dla.errors": ("dla",),
    "dla.config": ("dla.train", "dla.data", "dla.experiment", "dla.build", "dla.analysis", "dla.rundir", "dla.kinds"),
    # the registry: errors alone (the built-in kinds are imported by name on the first look-up)
    "dla.kind": ("dla.config", "dla.data", "dla.models", "dla.train", "dla.analysis", "dla.kinds", "dla.build",
                 "dla.experiment", "dla.report", "dla.sweep", "dla.cli", "dla.hub", "dla.rundir", "dla.device"),
    "dla.experiment": ("dla.analysis", "dla.data"),  # analysis callbacks come from the run kind
    "dla.report": ("dla.config", "dla.build", "dla.kinds", "dla.train", "dla.analysis"),  # it reads run files
    "dla.hub": ("dla.config", "dla.data", "dla.models", "dla.train", "dla.build"),  # Hub loading: a leaf
    "dla.kinds": ("dla.cli", "dla.experiment", "dla.sweep", "dla.report.site", "dla.build"),
    "dla.build": ("dla.kinds", "dla.analysis", "dla.experiment"),
    "dla": ("dla.cli",),  # nothing imports from the command line (its entry point aside)
}
EXEMPT = {"dla.__main__", "dla.cli"}  # the command line itself
# module -> the only dla modules it may import (a leaf over leaves)
ONLY = {"dla.manifest": ("dla.io", "dla.errors")}  # every study writes it, the report reads it


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every dla import in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("dla")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("dla"):
                continue
            names = [a.name for a in node.names]
            # `from dla import experiment` imports the module dla.experiment
            modules = [f"{base}.{n}" for n in names if (SRC / Path(*f"{base}.{n}".split("."))).with_suffix(".py").exists()
                       or (SRC / Path(*f"{base}.{n}".split(".")) / "__init__.py").exists()]
            found += [(m, [], node.lineno) for m in modules] or [(base, names, node.lineno)]
    return found


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    return {module_name(p): imports(p) for p in sorted(SRC.rglob("*.py"))}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_layer_rules_hold():
    broken = []
    for module, edges in graph().items():
        for prefix, banned in FORBIDDEN.items():
            if under(module, prefix) and module not in EXEMPT:
                broken += [f"{module}:{line} imports {target}" for target, _, line in edges
                           if any(under(target, b) for b in banned)]
    for module, allowed in ONLY.items():
        broken += [f"{module}:{line} imports {target}" for target, _, line in graph().get(module, [])
                   if target not in allowed]
    assert not broken, "layer rules broken:\n" + "\n".join(broken)


def test_no_import_cycles():
    edges = {m: sorted({t for t, _, _ in e}) for m, e in graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in edges and not state.get(nxt):
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in edges:
        if not state.get(module):
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_across_packages():
    crossing = []
    for module, edges in graph().items():
        package = module.rpartition(".")[0]
        for target, names, line in edges:
            private = [n for n in names if n.startswith("_")]
            if private and target.rpartition(".")[0] != package and target != package:
                crossing.append(f"{module}:{line} takes {', '.join(private)} from {target}")
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("rule", ["models", "loop", "rundir"])
def test_the_checker_catches_a_broken_rule(tmp_path, monkeypatch, rule):
    """The rules can fail: a module that breaks one is reported."""
    bad = {"models": ("dla/models/bad.py", "from dla.data.vision import SPECS\n"),
           "loop": ("dla/train/bad.py", "def f():\n    from dla.analysis.ood import msp\n"),
           "rundir": ("dla/rundir.py", "from dla.train.checkpoint import save_state\n")}[rule]
    fake = tmp_path / "src"
    (fake / Path(bad[0]).parent).mkdir(parents=True)
    (fake / bad[0]).write_text(bad[1])
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    with pytest.raises(AssertionError, match="layer rules broken"):
        test_layer_rules_hold()


def test_the_checker_catches_a_cycle(tmp_path, monkeypatch):
    fake = tmp_path / "src" / "dla"
    fake.mkdir(parents=True)
    (fake / "a.py").write_text("from dla import b\n")
    (fake / "b.py").write_text("def f():\n    from dla.a import g\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "src")
    with pytest.raises(AssertionError, match="dla.a -> dla.b -> dla.a"):
        test_no_import_cycles()
