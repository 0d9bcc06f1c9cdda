"""The pipeline (or some of its stages) over a small grid of Hydra values, one results table.

    .venv/bin/python scripts/sweep.py --out runs/sweep --grid stages.teacher.epochs=1,2 \\
        --grid prompt.max_length=128,256 --only data,tokenize,teacher,baselines \\
        experiment=cpu_real 'data.train.path=[../shared/data/preference/llmeval2.csv]'
    make sweep ARGS="--out runs/sweep --grid stages.teacher.epochs=1,2 experiment=cpu_real ..."

Every point of the grid (the product of the ``--grid`` values, in order) is one
``arena-distill pipeline`` run in its own process and its own run folder
(``<out>/<point>/``, ``run_dir`` set per point), so a point that fails does not stop the others
and a rerun of the sweep skips what each point already has (the pipeline's own freshness
check). A value holding commas (a list) is written in brackets: ``--grid
'pipeline.teachers=[minilm],[minilm,baseline/tfidf_lr]'``. ``--point 'k=v k2=v2'`` adds one
explicit point (several keys changed together; an empty string is the base alone), after the
grid's.

After every point ``<out>/results.json`` and ``<out>/results.md`` are rewritten with what the
points left: the report's OOF and holdout log losses when the report ran, else the training
stages' own scores (``teachers/<m>`` and ``students/<m>``: OOF over all folds once they are all
done, and every finished fold's validation log loss, so a one-fold sweep with
``stages.teacher.folds=0`` is scored too) and the baselines'. The best point of every score is
in bold (where the points differ); the minutes are this sweep's and those its pipeline steps
recorded (``pipeline.json``: what the point cost, also when a rerun skipped it). Nothing is scored here that a stage did not already score.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def split_values(text: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]``: commas inside brackets or braces stay."""
    values, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            values.append(cur)
            cur = ""
        else:
            cur += ch
    values.append(cur)
    return [v.strip() for v in values if v.strip()]


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["k=v1,v2", ...]`` -> ``[("k", ["v1", "v2"]), ...]``."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not split_values(values):
            raise SystemExit(f"--grid {spec!r}: expected KEY=VALUE[,VALUE...]")
        grid.append((key.strip(), split_values(values)))
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"--grid: a key appears twice ({keys})")
    return grid


def point_name(i: int, overrides: Sequence[str]) -> str:
    """A folder name for grid point ``i``: its index and its values, filesystem-safe."""
    parts = []
    for o in overrides:
        key, _, value = o.partition("=")
        parts.append(f"{key.rpartition('.')[2]}-{value}")
    # no "=" or "," in the name: it becomes a Hydra override (run_dir=...)
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", "_".join(parts))
    name = re.sub(r"-+", "-", name).strip("-")[:80]
    return f"p{i:02d}" + (f"_{name}" if name else "")


def points(grid: Sequence[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """``(name, overrides)`` of every grid point, the first key varying slowest."""
    combos = itertools.product(*[[f"{k}={v}" for v in vals] for k, vals in grid])
    return [(point_name(i, list(c)), list(c)) for i, c in enumerate(combos)]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def scores(run_dir: Path) -> dict[str, float]:
    """Every score a point's run folder holds: ``oof:<name>``, ``holdout:<name>`` (the
    report's), else ``oof:<kind>/<m>`` (+tta) of a finished training stage,
    ``fold_<k>:<kind>/<m>`` (+tta) of every finished fold, ``oof:`` / ``holdout:`` and
    ``fold_<k>:`` of the baselines."""
    out: dict[str, float] = {}
    report = _read(run_dir / "report" / "metrics.json")
    if report:
        for split in ("oof", "holdout"):
            for name, value in (report.get(f"{split}_log_loss") or {}).items():
                if isinstance(value, int | float):
                    out[f"{split}:{name}"] = float(value)
    for kind, folder in (("teacher", "teachers"), ("student", "students")):
        for model_dir in sorted((run_dir / folder).glob("*")):
            name = f"{kind}/{model_dir.name}"
            whole = _read(model_dir / "metrics.json")
            if whole and f"oof:{name}" not in out:
                out[f"oof:{name}"] = float(whole["oof"]["log_loss"])
                if "log_loss_tta" in whole["oof"]:
                    out[f"oof:{name}+tta"] = float(whole["oof"]["log_loss_tta"])
            for fold in sorted(model_dir.glob("fold_*")):
                m = _read(fold / "metrics.json")
                if m:
                    out[f"{fold.name}:{name}"] = float(m["log_loss"])
                    if "log_loss_tta" in m:
                        out[f"{fold.name}:{name}+tta"] = float(m["log_loss_tta"])
                    if "prior_log_loss" in m:
                        out[f"{fold.name}:prior"] = float(m["prior_log_loss"])
    for base in sorted((run_dir / "baselines").glob("*")):
        m = _read(base / "metrics.json")
        for split in ("oof", "holdout"):
            key = f"{split}:baseline/{base.name}"
            if m and f"{split}_log_loss" in m and key not in out:
                out[key] = float(m[f"{split}_log_loss"])
        # per fold too: a one-fold sweep compares with the baseline on the same rows
        for k, value in enumerate((m or {}).get("fold_log_loss") or []):
            out[f"fold_{k}:baseline/{base.name}"] = float(value)
    return out


def step_seconds(run_dir: Path) -> float | None:
    """The seconds of the point's pipeline steps as last run (``pipeline.json``): what the
    point cost, also when a rerun of the sweep skipped its fresh steps."""
    state = _read(run_dir / "pipeline.json")
    steps = (state or {}).get("steps") or {}
    seconds = [s.get("seconds") for s in steps.values() if isinstance(s, dict)]
    return round(sum(x for x in seconds if x), 1) if seconds else None


def _order(name: str) -> tuple:
    where, _, what = name.partition(":")
    return (where != "oof", where != "holdout", where, what.startswith("baseline/"), what)


def markdown(records: Sequence[Mapping]) -> str:
    """The points (overrides, status, minutes) and one row per score, a column per point,
    the lowest log loss of each row in bold."""
    lines = [
        "| point | overrides | status | minutes (this sweep) | minutes (its steps) |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "(base)"
        steps = r.get("step_seconds")
        lines.append(
            f"| {r['point']} | {overrides} | {r['status']} | {r['seconds'] / 60:.1f} | "
            f"{'' if steps is None else f'{steps / 60:.1f}'} |"
        )
    names = sorted({n for r in records for n in r["scores"]}, key=_order)
    if names:
        lines += ["", "| log loss | " + " | ".join(r["point"] for r in records) + " |"]
        lines.append("|" + "---|" * (len(records) + 1))
        for name in names:
            values = [r["scores"].get(name) for r in records]
            present = [v for v in values if v is not None]
            best = min(present) if len(set(present)) > 1 else None  # bold only a difference
            cells = [
                "" if v is None else (f"**{v:.4f}**" if v == best else f"{v:.4f}") for v in values
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, records: list[dict], grid, base: Sequence[str], only) -> None:
    payload = {"base_overrides": list(base), "only": only, "grid": dict(grid), "points": records}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "results.md").write_text(markdown(records))


def command(python: str, run_dir: Path, base: Sequence[str], point: Sequence[str], only) -> list:
    return [
        python,
        "-m",
        "arena_distill",
        "pipeline",
        *(["--only", only] if only else []),
        *base,
        *point,
        f"run_dir={run_dir}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the sweep's folder (one run per point)")
    parser.add_argument("--grid", action="append", default=[], help="KEY=V1,V2 (repeatable)")
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        help="one explicit point: space-separated overrides (repeatable; after the grid's)",
    )
    parser.add_argument("--only", help="pipeline --only: comma-separated stages to run")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    parser.add_argument("--dry-run", action="store_true", help="list the points, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by every point")
    args = parser.parse_args(argv)
    grid = parse_grid(args.grid)
    out = Path(args.out)
    todo = points(grid) if grid else []
    for spec in args.point:
        overrides = spec.split()  # "" -> the base overrides alone
        todo.append((point_name(len(todo), overrides), overrides))
    if not grid and not args.point:
        raise SystemExit("nothing to run: give --grid KEY=V1,V2 and/or --point 'K=V K2=V2'")
    if args.dry_run:
        for name, overrides in todo:
            print(" ".join(command(args.python, out / name, args.overrides, overrides, args.only)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    failed = 0
    for i, (name, overrides) in enumerate(todo, start=1):
        run_dir = out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = command(args.python, run_dir, args.overrides, overrides, args.only)
        print(f"[sweep {i}/{len(todo)}] {name}: {' '.join(overrides)}", flush=True)
        t0 = time.perf_counter()
        with open(run_dir / "sweep.log", "a") as logf:
            rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t0
        failed += rc != 0
        records.append(
            {
                "point": name,
                "overrides": overrides,
                "run_dir": str(run_dir),
                "status": "ok" if rc == 0 else f"failed (rc {rc}, {run_dir / 'sweep.log'})",
                "seconds": round(seconds, 1),
                "step_seconds": step_seconds(run_dir),
                "scores": scores(run_dir),
            }
        )
        write_results(out, records, grid, args.overrides, args.only)
        print(f"[sweep {i}/{len(todo)}] {name}: {records[-1]['status']} in {seconds:.0f}s")
    print(f"results: {out / 'results.md'} and {out / 'results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
