"""Fails when a documentation example reaches into jaxrm's private modules.

Examples are what readers copy: they must run against the public API alone
(``jaxrm.quant.Codebook``, not ``jaxrm.quant._types.Codebook``). Checks the
``python`` code blocks of ``docs/**/*.md`` and ``README.md`` and the scripts in
``examples/``: imports of ``jaxrm`` modules or names starting with ``_``, and
attribute chains such as ``jaxrm.quant._types``.

Usage: ``python .ci/check_docs.py [ROOT]``; exits 1 and lists each offence.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

_FENCE = re.compile(r"^```(?:python|py)\s*\n(.*?)^```", re.S | re.M)


def _private(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "jaxrm" and any(p.startswith("_") for p in parts[1:])


def _dotted(node: ast.expr) -> str | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(names)])
    return None


def private_uses(source: str) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for each private ``jaxrm`` import or attribute in ``source``."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _private(a.name):
                    yield node.lineno, f"import {a.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if _private(full):
                    yield node.lineno, f"from {node.module} import {a.name}"
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and _private(dotted):
                yield node.lineno, dotted


def examples(root: Path) -> Iterator[tuple[Path, int, str]]:
    """``(file, first line, code)`` of every example under ``root``."""
    for md in sorted([root / "README.md", *(root / "docs").rglob("*.md")]):
        if not md.is_file():
            continue
        text = md.read_text()
        for m in _FENCE.finditer(text):
            yield md, text[: m.start(1)].count("\n") + 1, m.group(1)
    for py in sorted((root / "examples").glob("*.py")):
        yield py, 1, py.read_text()


def offences(root: Path) -> list[str]:
    out = []
    for path, first, code in examples(root):
        try:
            uses = list(private_uses(code))
        except SyntaxError as e:
            out.append(f"{path}:{first + (e.lineno or 1) - 1}: example does not parse ({e.msg})")
            continue
        out += [f"{path}:{first + line - 1}: private name {what}" for line, what in uses]
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    found = offences(root)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        print(f"{len(found)} private jaxrm name(s) in documentation examples; use the public "
              "API (the names in docs/api/)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
