"""The import rules of docs/architecture.md, read from the source with ``ast``.

Each subpackage of ``jaxrm`` may import only the packages below it in the
layer picture; nothing in ``jaxrm`` imports the experiments, benchmarks,
examples or tests; a subpackage's ``__init__.py`` only re-exports.
"""

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JAXRM = ROOT / "jaxrm"

# package -> the jaxrm packages it may import (besides itself and the private
# ground-floor helpers ``jaxrm/_*.py``). Keep in step with docs/architecture.md.
MAY_IMPORT = {
    "tree": set(),
    "calib": {"tree"},
    "prune": {"tree", "calib"},
    "quant": {"tree", "calib"},
    "distill": {"tree"},
    "coding": {"tree", "quant"},
    "memory": {"tree", "quant"},
}
OUTSIDE = {"experiments", "benchmarks", "examples", "tests"}


def _package_of(path: Path) -> str:
    """``jaxrm/prune/_masks.py`` -> ``prune``, ``jaxrm/tree.py`` -> ``tree``, the top -> ``""``."""
    rel = path.relative_to(JAXRM).with_suffix("").parts
    return "" if rel == ("__init__",) else rel[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import in ``path`` (nested ones included).

    ``from jaxrm import prune`` counts as ``jaxrm.prune``; relative imports are
    resolved against ``path``'s package.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""),
                                                   package)
            else:
                base = node.module or ""
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _target(module: str) -> str | None:
    """The jaxrm package a module belongs to (``None`` outside jaxrm)."""
    parts = module.split(".")
    if parts[0] != "jaxrm":
        return None
    return parts[1] if len(parts) > 1 else ""


def _is_module(name: str) -> bool:
    """Whether ``jaxrm.<...>`` names a module or package (not a function imported from one)."""
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (JAXRM / rel).with_suffix(".py").is_file() or (JAXRM / rel / "__init__.py").is_file()


def violations(files) -> list[str]:
    found = []
    for path in files:
        pkg = _package_of(path)
        for line, module in imported_modules(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module.split(".")[0] in OUTSIDE:
                found.append(f"{where}: jaxrm imports {module}")
                continue
            target = _target(module)
            if target is None or pkg == "" or target in ("", pkg) or target.startswith("_"):
                continue  # outside jaxrm, the top-level face, itself, or a private helper
            if not _is_module(module) and module.count(".") > 1:
                continue  # a name imported from a module already checked
            allowed = MAY_IMPORT.get(pkg)
            if pkg.startswith("_"):
                allowed = {"tree"}  # private ground-floor helpers stand on tree alone
            if allowed is None:
                continue  # a package not in the picture yet: above every known one
            if target not in allowed:
                found.append(f"{where}: jaxrm.{pkg} may not import jaxrm.{target} ({module})")
    return found


def init_statements_that_do_not_reexport(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    bad = []
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the module docstring
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if names and names <= {"__all__", "__version__"}:
                continue
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {type(node).__name__}")
    return bad


def _sources():
    return sorted(JAXRM.rglob("*.py"))


def test_packages_import_only_the_layers_below():
    assert violations(_sources()) == []


def test_subpackage_inits_only_reexport():
    inits = [p for p in _sources() if p.name == "__init__.py"]
    assert len(inits) > 5
    assert [b for p in inits for b in init_statements_that_do_not_reexport(p)] == []


def test_the_rules_are_enforced(tmp_path, monkeypatch):
    # A checker that accepts everything would pass the tests above: show it refuses.
    fake = tmp_path / "jaxrm"
    for pkg, body in {
        "prune": "from jaxrm.quant import uniform\nfrom jaxrm import tree\n",
        "tree": "import experiments.train\n",
        "coding": "from ..quant import _types\nfrom jaxrm.distill import kd\n",
        "calib": "def f():\n    from jaxrm import prune\n",
    }.items():
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("x = 1\n")
        (fake / pkg / "_impl.py").write_text(body)
    for pkg in ("quant", "distill"):
        (fake / pkg).mkdir()
        (fake / pkg / "__init__.py").write_text("")
    (fake / "quant" / "_types.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "JAXRM", fake)
    found = violations(sorted(fake.rglob("*.py")))
    assert any("jaxrm.prune may not import jaxrm.quant" in v for v in found)
    assert any("jaxrm imports experiments.train" in v for v in found)
    assert any("jaxrm.coding may not import jaxrm.distill" in v for v in found)
    assert any("jaxrm.calib may not import jaxrm.prune" in v for v in found)
    assert not any("coding may not import jaxrm.quant" in v for v in found)  # allowed
    assert not any("prune may not import jaxrm.tree" in v for v in found)  # allowed
    assert len(found) == 4
    bad = init_statements_that_do_not_reexport(fake / "prune" / "__init__.py")
    assert bad == ["jaxrm/prune/__init__.py:1: Assign"]


def test_architecture_page_states_the_same_rules():
    # The table under "What each package may import" is the contract readers see.
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## What each package may import", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`jaxrm."):
            deps = {d.strip("` ").removeprefix("jaxrm.") for d in cells[1].split(",")}
            table[cells[0].strip("`").removeprefix("jaxrm.")] = deps - {"nothing"}
    assert table == MAY_IMPORT
