"""Markdown results tables from finished runs' reports (the README's "Results on real data").

    .venv/bin/python scripts/results_table.py runs/llmeval2 runs/pandalm runs/union
    .venv/bin/python scripts/results_table.py runs/llmeval2 --json results.json

Reads ``<run>/report/metrics.json`` of every run (written by ``make report`` / the last step
of ``make pipeline``) and prints three tables, one column per run: log loss per stage (OOF on
the cv rows, holdout for whole-data models, baselines both ways), the recipe's gains (swap-TTA,
distillation, merge, quantization), and what each stage cost (seconds, throughput, peak memory).
Nothing is computed here that the report did not already compute.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

BASELINES = ("prior", "length_lr", "tfidf_lr")


def load(run: Path) -> dict:
    path = run / "report" / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `make report` (or `make pipeline`) for {run}")
    return json.loads(path.read_text())


def _f(x: object, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) else ""


def score_rows(m: Mapping) -> list[tuple[str, str]]:
    """(label, cell) pairs of one run, in table order."""
    oof, ho = m.get("oof_log_loss", {}), m.get("holdout_log_loss", {})
    rows: list[tuple[str, str]] = [
        ("rows (cv / holdout)", f"{m.get('n_cv_rows')} / {m.get('n_holdout_rows')}")
    ]
    for name in sorted(oof):
        if name.startswith(("teacher/", "student/")) and not name.endswith(("+tta", "+ts")):
            folds = m.get("fold_log_loss", {}).get(name, [])
            rows.append(
                (
                    f"{name}: OOF (+tta) [folds]",
                    f"{_f(oof[name])} ({_f(oof.get(name + '+tta'))}) "
                    f"[{', '.join(_f(x, 3) for x in folds)}]",
                )
            )
    for name in ("folds_mean", "merged", "quantized"):
        if name in ho:
            rows.append(
                (f"{name}: holdout (+tta)", f"{_f(ho[name])} ({_f(ho.get(name + '+tta'))})")
            )
    for b in BASELINES:
        key = f"baseline/{b}"
        if key in oof or key in ho:
            rows.append((f"{key}: OOF / holdout", f"{_f(oof.get(key))} / {_f(ho.get(key))}"))
    return rows


def gain_rows(m: Mapping) -> list[tuple[str, str]]:
    rows = [(f"swap-TTA gain, OOF: {s}", _f(g)) for s, g in sorted(m.get("tta_gain", {}).items())]
    rows += [
        (f"swap-TTA gain, holdout: {s}", _f(g))
        for s, g in sorted(m.get("holdout_tta_gain", {}).items())
    ]
    rows += [
        (f"{g['step']} ({g['rows']}): {g['compared']}", _f(g["gain"]))
        for g in m.get("recipe_gains", [])
    ]
    return rows


def cost_rows(m: Mapping) -> list[tuple[str, str]]:
    out = []
    for r in m.get("cost", []):
        if r.get("seconds") is None:
            continue
        parts = [f"{r['seconds']:.0f} s"]
        if r.get("train_examples_per_s"):
            parts.append(
                f"train {r['train_examples_per_s']:.1f} ex/s, {r['train_tokens_per_s']:.0f} tok/s"
            )
        if r.get("rows_per_s"):
            parts.append(f"infer {r['rows_per_s']:.1f} rows/s, {r['tokens_per_s']:.0f} tok/s")
        if r.get("peak_rss_mb"):
            parts.append(f"peak {r['peak_rss_mb']:.0f} MB")
        out.append((r["output"], "; ".join(parts)))
    return out


def table(title: str, runs: Sequence[str], per_run: Sequence[list[tuple[str, str]]]) -> str:
    labels: list[str] = []
    for rows in per_run:
        labels += [label for label, _ in rows if label not in labels]
    cells = [dict(rows) for rows in per_run]
    lines = [f"| {title} | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {lab} | " + " | ".join(c.get(lab, "") for c in cells) + " |" for lab in labels]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="run folders (each with report/metrics.json)"
    )
    ap.add_argument("--json", type=Path, help="also write the tables' numbers as JSON here")
    args = ap.parse_args(argv)
    metrics = [load(r) for r in args.runs]
    names = [r.name for r in args.runs]
    tables = {
        "log loss": [score_rows(m) for m in metrics],
        "gain (log loss, + is better)": [gain_rows(m) for m in metrics],
        "cost": [cost_rows(m) for m in metrics],
    }
    print("\n\n".join(table(t, names, rows) for t, rows in tables.items()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {t: dict(zip(names, map(dict, rows), strict=True)) for t, rows in tables.items()},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
