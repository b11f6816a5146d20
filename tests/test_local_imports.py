"""Imports sit at module level; a function-local import carries its one-line reason (issue 20).

The reasons a local import is allowed are few: a heavy library only one path needs (matplotlib, scikit-learn,
transformers), an optional extra (mlflow), or a command module keeping ``backdrop --help`` light. The reason is
a comment on the import's line or on the line before; the imports that directly follow a reasoned import in the
same block (one comment over a group, as the command handlers write it) share its reason. Tool directives
(``# noqa``, ``# type:``, ``# fmt:``, ``# pragma``) are not reasons.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("offline_data", "reward", "rollout", "policy", "experiments")
DIRECTIVE = re.compile(r"#\s*(noqa|type:|fmt:|pragma)")


def unreasoned_local_imports(source: str) -> list[tuple[int, str]]:
    """(1-based line, statement) of every import inside a function or class body that has no reason comment."""
    lines = source.splitlines()

    def has_reason(line: str) -> bool:
        comment = line[line.index("#") :] if "#" in line else ""
        return bool(comment.strip("# ")) and not DIRECTIVE.match(comment)

    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for _, value in ast.iter_fields(node):
            body = value if isinstance(value, list) else [value]
            previous_reasoned = False
            for child in body:
                if not isinstance(child, ast.AST):
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    if local:
                        first = lines[child.lineno - 1]
                        before = lines[child.lineno - 2].strip() if child.lineno > 1 else ""
                        reasoned = (
                            has_reason(first) or (before.startswith("#") and has_reason(before)) or previous_reasoned
                        )
                        if not reasoned:
                            found.append((child.lineno, ast.unparse(child)))
                        previous_reasoned = reasoned
                    continue
                previous_reasoned = False
                inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
                visit(child, inner)

    visit(ast.parse(source), False)
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os\n\ndef f():\n    import json\n", [(4, "import json")]),
        ("def f():\n    import json  # heavy: only here\n", []),
        ("def f():\n    # heavy: only here\n    import json\n    from os import path\n", []),
        ("def f():\n    # heavy: only here\n    import json\n    x = 1\n    import csv\n", [(5, "import csv")]),
        ("def f():\n    import json  # noqa: F401\n", [(2, "import json")]),
        (
            "class A:\n    def f(self):\n        if True:\n            from os import path\n",
            [(4, "from os import path")],
        ),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n", []),
        ("try:\n    import mlflow\nexcept ImportError:\n    mlflow = None\n", []),
    ],
)
def test_the_checker_finds_unreasoned_local_imports(source: str, expected: list[tuple[int, str]]) -> None:
    assert unreasoned_local_imports(source) == expected


def test_every_local_import_says_why() -> None:
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            found |= {(name, line, text) for line, text in unreasoned_local_imports(path.read_text(encoding="utf-8"))}
    new = sorted(found)
    assert not new, "function-local imports without a reason (move them to the top, or say why on the line):\n" + (
        "\n".join(f"  {name}:{line}: {text}" for name, line, text in new)
    )
