"""The demo's report: the table of every model (printed and in `summary.md`), its one-line verdict against the box
reference, and --quick's note when its models miss the bars."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..model_card import format_macs
from ..results import EvaluationResult
from ..standin import STANDIN_REPO_ID
from ..types import PromptType

EVAL_PROMPTS = (PromptType.BOX.value, PromptType.POINT.value)  # every model is reported with both (a point gives no box-filling shortcut)


def by_prompt(record: dict) -> dict[str, EvaluationResult]:
    """The typed results of one of the demo's evaluations (`DemoRun.evaluate`, as recorded in its state file)."""
    return {prompt: EvaluationResult.from_dict(result) for prompt, result in record["by_prompt"].items()}


def _mious(record: dict) -> dict:
    results = by_prompt(record)
    return {f"miou_{prompt}": results[prompt].miou for prompt in EVAL_PROMPTS}


def summary_rows(run, base_params: int, base_macs: int) -> list[dict]:
    stages = run.state.stages
    rows = [
        {"model": "base, zero-shot on B", "params": base_params, "macs": base_macs, **_mious(stages["zero_shot"])},
        {"model": f"base fine-tuned on B ({run.plan.sizes['train_steps']} steps, as the supernet)", "params": base_params,
         "macs": base_macs, **_mious(stages["finetuned"])},
    ]
    for reduction in run.args.size_reductions:
        s = stages[f"search_{int(reduction * 100)}"]
        rows.append({"model": f"SuperSAM, ≥{reduction:.0%} smaller ({Path(s['folder']).name})", "params": s["params"],
                     "macs": s["macs"], **_mious(s["test"])})
    rows.append({"model": "the box itself as the mask (reference)", "params": None, "macs": None,
                 "miou_box": by_prompt(stages["zero_shot"])["box"].box_reference_miou, "miou_point": None})
    return rows


def table(rows: list[dict], base_params: int) -> str:
    lines = ["| model | params | MACs | mIoU on B, box prompt | mIoU on B, point prompt |", "|---|---|---|---|---|"]
    for row in rows:
        params = f"{row['params']:,} ({row['params'] / base_params:.0%})" if row["params"] is not None else "—"
        macs = format_macs(row["macs"]) if row["macs"] is not None else "—"
        point = f"{row['miou_point']:.3f}" if row["miou_point"] is not None else "— (no shortcut)"
        lines.append(f"| {row['model']} | {params} | {macs} | {row['miou_box']:.3f} | {point} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """One line on the box reference: are the models above what copying the prompt scores?"""
    reference = rows[-1]["miou_box"]
    above = [row["model"] for row in rows[:-1] if row["miou_box"] > reference]
    if not above:
        return (f"Every model here scores below the box itself as the mask ({reference:.3f}) with box prompts: at this "
                "budget the run shows the pipeline's mechanics, not segmentation quality.")
    return f"{len(above)} of {len(rows) - 1} models score above the box itself as the mask ({reference:.3f}) with box prompts."


def _base_note(base: dict | None) -> str:
    """What the base was (the shipped stand-in, or one trained here), with its mIoU on A; "" for a given model."""
    if base is None:
        return ""
    on_a = base.get("domain_A", {})
    figures = ", ".join(f"{p} {r['miou']:.3f}" for p, r in on_a.items())
    if base.get("repo_id"):
        return (f"The base is `{STANDIN_REPO_ID}`, the stand-in SAM shipped with supersam_hf (a small SAM trained "
                f"on synthetic domain A, not SAM; mIoU on A: {figures}; the box itself as the mask: "
                f"{on_a['box']['box_reference_miou']:.3f}), loaded from the HF cache offline, as a pretrained "
                "checkpoint would be.\n\n")
    return (f"The base is a small SAM trained here on synthetic domain A (mIoU on A: {figures}), a stand-in "
            "for a pretrained checkpoint, which cannot be downloaded offline.\n\n")


def write_summary(run, supernet, base_params: int, started: float) -> dict:
    """`summary.md` and `pareto.png` in the run's folder, the table (and --quick's note) printed; returns the state's
    summary record."""
    output, state, base_macs = run.output, run.state, supernet.count_macs()
    rows = summary_rows(run, base_params, base_macs)
    text, line = table(rows, base_params), verdict(rows)
    measured = ("mIoU over objects of domain B's held-out test split, one prompt per object (its bounding box, or "
                "one point inside it), the model's own mask choice (highest predicted IoU), masks compared at the "
                f"original image size; the subnets were searched with {run.search_prompt} prompts. The reference row "
                "fills each box prompt as the mask (a point gives no such shortcut)")
    splits = "".join(f"- {split}\n" for split in state.stages["data"].get("splits", []))
    note = quick_note(run) if run.args.quick else None
    (output / "summary.md").write_text(f"# SuperSAM demo\n\n{_base_note(state.stages.get('base'))}{splits}\n{text}\n\n"
                                       f"{line}\n\nMeasured: {measured}.\n\nExported checkpoints: `{output / 'exports'}`.\n"
                                       + (f"\n{note}\n" if note else ""))
    search_plot = output / "search" / f"search_{int(min(run.args.size_reductions) * 100)}" / "pareto.png"
    if search_plot.exists():
        shutil.copy(search_plot, output / "pareto.png")
    print("\n" + text + f"\n\n{line}\nMeasured: {measured}.\nWritten: {output / 'summary.md'}, "
          f"{output / 'pareto.png'}, {output / 'exports'}/ (this session {time.time() - started:.0f} s; "
          f"estimated {run.plan.total_minutes:.0f} min for a whole run)")
    record = state.record("summary", {"base_params": base_params, "base_macs": base_macs, "measured": measured,
                                      "verdict": line, "rows": rows})
    if note:
        print(note)
    return record


def quick_note(run) -> str | None:
    """One line when --quick's models miss the bars: the base on A (box >= reference + 0.15, point >= 0.6), or the
    best winner on B (above B's box reference)."""
    stages = run.state.stages
    base = stages.get("base")
    if base is None or "point_miou_domain_A" not in base:
        return None
    reference_b = by_prompt(stages["zero_shot"])["box"].box_reference_miou
    best_b = max(by_prompt(stages[f"search_{int(r * 100)}"]["test"])["box"].miou for r in run.args.size_reductions)
    if (base["miou_domain_A"] >= base["box_reference_domain_A"] + 0.15 and base["point_miou_domain_A"] >= 0.6
            and best_b > reference_b):
        return None
    # the weaker of the two margins: a base above the reference on A does not make B's winners "near" it
    gap = min(base["miou_domain_A"] - base["box_reference_domain_A"], best_b - reference_b)
    near = "below" if gap < 0 else "near" if gap < 0.15 else "above"
    return (f"Quick mode shows the mechanics, not the accuracy: its models are {near} the box reference (base on A: box "
            f"{base['miou_domain_A']:.3f} vs box-as-mask {base['box_reference_domain_A']:.3f}, point "
            f"{base['point_miou_domain_A']:.3f}; best winner on B: box {best_b:.3f} vs box-as-mask {reference_b:.3f}); "
            "run without --quick for the full recipe.")


__all__ = ["EVAL_PROMPTS", "by_prompt", "quick_note", "summary_rows", "table", "verdict", "write_summary"]
