"""``compare_runs`` puts two runs side by side on the same rows (``comparison.{json,md,html}``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from arena_distill.io import write_json
from arena_distill.metrics import log_loss
from arena_distill.report.doc import Doc
from arena_distill.report.load import HOLDOUT, OOF, ReportError, RunPredictions, load_run
from arena_distill.report.plots import log_loss_png
from arena_distill.report.score import fold_log_loss


def compare_runs(
    run_a: str | Path | RunPredictions,
    run_b: str | Path | RunPredictions,
    out_dir: str | Path | None = None,
    *,
    plots: bool = True,
) -> dict:
    """Two runs' stages side by side on the SAME rows: for every stage both runs have, the
    ids both scored, with ``diff = b − a``. Refuses runs whose folds (split, fold) differ on
    a shared id, or whose labels do. Writes ``comparison.{json,md,html}`` into ``out_dir``."""
    a = run_a if isinstance(run_a, RunPredictions) else load_run(run_a)
    b = run_b if isinstance(run_b, RunPredictions) else load_run(run_b)
    fa, fb = a.folds.set_index("id"), b.folds.set_index("id")
    shared = fa.index.intersection(fb.index)
    if not len(shared):
        raise ReportError(f"{a.run_dir} and {b.run_dir} share no ids")
    differ = (fa.loc[shared, ["split", "fold"]] != fb.loc[shared, ["split", "fold"]]).any(axis=1)
    if differ.any():
        raise ReportError(
            f"folds differ between {a.run_dir} and {b.run_dir} on {int(differ.sum())} shared ids "
            f"(e.g. {list(shared[differ.to_numpy()][:3])}); their scores are not comparable"
        )
    la, lb = a.labels, b.labels
    both = la.index.intersection(lb.index)
    if (la.loc[both] != lb.loc[both]).any():
        raise ReportError(f"labels differ between {a.run_dir} and {b.run_dir}")

    out: dict = {
        "run_a": str(a.run_dir),
        "run_b": str(b.run_dir),
        "oof_log_loss": {},
        "fold_log_loss": {},
        "holdout_log_loss": {},
    }
    for section, key in ((OOF, "oof_log_loss"), (HOLDOUT, "holdout_log_loss")):
        sa = {s.name: s for s in a.section(section)}
        sb = {s.name: s for s in b.section(section)}
        for name in [n for n in sa if n in sb]:
            ids = [i for i in sa[name].ids if i in set(sb[name].ids)]
            pa, pb = sa[name].subset(ids), sb[name].subset(ids)
            lla, llb = log_loss(pa.probs, pa.labels), log_loss(pb.probs, pb.labels)
            out[key][name] = {"a": lla, "b": llb, "diff": llb - lla, "n_rows": len(ids)}
            if section == OOF:
                fa_ = fold_log_loss(pa.probs, pa.labels, pa.folds)
                fb_ = fold_log_loss(pb.probs, pb.labels, pb.folds)
                out["fold_log_loss"][name] = {
                    "a": fa_,
                    "b": fb_,
                    "diff": [y - x for x, y in zip(fa_, fb_, strict=True)],
                }
        out.setdefault("only_in_a", []).extend(f"{section}:{n}" for n in sa if n not in sb)
        out.setdefault("only_in_b", []).extend(f"{section}:{n}" for n in sb if n not in sa)

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "comparison.json", out)
        render_comparison(out, plots=plots).write(out_dir, "comparison")
    return out


def render_comparison(c: Mapping, *, plots: bool = True) -> Doc:
    doc = Doc("arena-distill comparison")
    doc.p(
        f"a = `{c['run_a']}`, b = `{c['run_b']}`. diff = b − a (negative: b is better). "
        "Each stage is scored on the ids both runs scored; folds are the same."
    )
    for key, label in (("oof_log_loss", "OOF (cv rows)"), ("holdout_log_loss", "holdout")):
        doc.h(label)
        rows = [[s, v["a"], v["b"], v["diff"], v["n_rows"]] for s, v in c[key].items()]
        doc.table(["stage", "a", "b", "diff", "rows"], rows or [["none", None, None, None, 0]])
    if c["fold_log_loss"]:
        doc.h("Per fold (diff = b − a)")
        n = max(len(v["diff"]) for v in c["fold_log_loss"].values())
        doc.table(
            ["stage", *(f"fold {k}" for k in range(n))],
            [[s, *v["diff"]] for s, v in c["fold_log_loss"].items()],
        )
    if c.get("only_in_a") or c.get("only_in_b"):
        doc.p(
            f"Only in a: {', '.join(c.get('only_in_a', [])) or 'none'}. "
            f"Only in b: {', '.join(c.get('only_in_b', [])) or 'none'}."
        )
    if plots and c["oof_log_loss"]:
        doc.image(
            "comparison_oof",
            log_loss_png(
                "OOF log loss diff (b − a)",
                {s: v["diff"] for s, v in c["oof_log_loss"].items()},
                0.0,
            ),
            "OOF log loss difference",
        )
    return doc
