"""docs/grant-matrix.md shows exactly the matrix the code applies."""

from pathlib import Path

from orders_ops.grants import markdown_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "grant-matrix.md"


def test_the_documented_matrix_is_the_applied_matrix() -> None:
    assert markdown_table() in DOC.read_text()
