"""The one Markdown table renderer: the results' own tables, the model card and the compare report use it.

It lives on the record's floor, the lowest that renders a table (``TasksResult.table``), so that every
floor above (card, report) can share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any


def markdown_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    cell: Callable[[Any], str] = str,
    spaced_rule: bool = False,
) -> list[str]:
    """A GitHub-flavoured Markdown table, one string a line: ``header``, its rule (``|---|---|``, or with
    ``spaced_rule`` ``| --- | --- |``) and ``rows``, each value written by ``cell``."""
    rule = _row(["---"] * len(header)) if spaced_rule else "|" + "---|" * len(header)
    return [_row(header), rule, *(_row(map(cell, row)) for row in rows)]


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"
