"""Every Python file stays valid for Python 3.9, the oldest Python that Slicer 5.x embeds."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SOURCES = sorted(
    p for folder in ("SpinalCordSeg", "LesionQC", "benchmarks", "training")
    for p in (REPO / folder).rglob("*.py")
    if (REPO / folder).is_dir()
)


def _annotations(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a]
            yield from (a.annotation for a in arguments if a.annotation)
            if node.returns:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _uses_new_annotation_syntax(annotation: ast.AST) -> bool:
    """``X | Y`` or ``list[int]``-style subscripts of builtins, which 3.9 cannot evaluate."""
    for node in ast.walk(annotation):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return True
    return False


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_parses_as_python_39(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    future = any(
        isinstance(node, ast.ImportFrom) and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    if not future:
        offending = [ast.unparse(a) for a in _annotations(tree) if _uses_new_annotation_syntax(a)]
        assert not offending, f"{path.name}: 'X | Y' annotations need 'from __future__ import annotations'"


def test_sources_were_found():
    assert len(SOURCES) > 10
