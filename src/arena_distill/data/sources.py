"""The entries of the ``data`` config read into normalised tables.

An entry is ``{path, format, source, options}`` (``settings.DataSpec``), where ``path`` is one
file or a list of files in the same format, or a bare path string read as a competition-layout
file. The data stage reads train, test, extra and pretraining sets through these; the
pseudo_label stage reads the unlabelled pool (``data.unlabelled``) the same way.
"""

from __future__ import annotations

import pandas as pd

from arena_distill.data.readers import load_source
from arena_distill.data.schema import DataError, empty_table
from arena_distill.data.summary import DataSummary
from arena_distill.settings import DataSpec


def spec_paths(spec: DataSpec | str) -> list[str]:
    """The file(s) of one data-config entry: ``path`` may be one path or a list of paths."""
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec.path, str):
        return [spec.path]
    if not spec.path:
        raise DataError("`path` is an empty list", file=str(spec))
    return [str(p) for p in spec.path]


def load_spec(spec: DataSpec | str, *, summary: DataSummary, on_bad_row: str) -> pd.DataFrame:
    """Read one entry of the data config: ``{path, format, source, options}``, where ``path`` is
    one file or a list of files in the same format (concatenated: a union of sets), or a bare
    path string, read as a competition-format file (``data.pretrain=[a.csv,b.csv]`` on the
    command line). Ids must stay unique across the files (the stage checks)."""
    if isinstance(spec, str):
        spec = DataSpec(path=spec, format="competition")
    tables = [
        load_source(
            path,
            spec.format,
            summary=summary,
            source=spec.source,
            on_bad_row=on_bad_row,
            **(spec.options or {}),
        )
        for path in spec_paths(spec)
    ]
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def load_specs(specs, *, summary: DataSummary, on_bad_row: str) -> pd.DataFrame:
    tables = [load_spec(s, summary=summary, on_bad_row=on_bad_row) for s in specs or []]
    return pd.concat(tables, ignore_index=True) if tables else empty_table()


def check_disjoint_ids(tables: dict[str, pd.DataFrame]) -> None:
    """Ids key every later artifact (folds, logits, predictions): they must not collide."""
    seen: dict[str, str] = {}
    for name, df in tables.items():
        for rid in df["id"]:
            if rid in seen:
                raise DataError(
                    f"id also appears in the {seen[rid]} table; ids must be unique across sets",
                    file=name,
                    row=rid,
                    column="id",
                )
            seen[rid] = name
