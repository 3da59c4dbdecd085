"""Which checkpoint-selection rule to trust on a small training set: a study on val alone.

One bccd35 run (BCCD-35, configs/bccd35.yaml) trained to the end of its schedule with no early
stop and with a weight EMA, a checkpoint at every validation (every `--eval-every-epochs`), all
kept. Then the raw and the EMA weights of every checkpoint are evaluated on two halves of BCCD
`val` (its sorted ids alternately: valA 44 images, valB 43), on the whole of `val` and on `test`.

The rules (raw or EMA weights; an early stop after P validations without a better AP50, the
engine's own `BestCheckpoint` rule, P = 0: off) are compared on val alone: pick the best
checkpoint on one half among those the rule would have reached before stopping, score that pick
on the other half, both ways, and average. The test columns are reported next to them, never
used to choose (issue 16: "validation picks well" is judged on test afterwards).

The half splits live in a folder of their own (`<out>/voc_root`: ImageSets/Main with BCCD's split
files plus valA / valB, and links to BCCD's Annotations/ and JPEGImages/), so the dataset folder
is never written. BCCD: `../shared/data/BCCD` from the repository, or $RFCN_BCCD_DIR.

    python benchmarks/checkpoint_selection.py [--steps 5924] [--out runs/checkpoint_selection]
                                              [--analyse-only]

At the default 5924 steps (small_data.py's (b) schedule at 30 minutes on the 2026-12-03 host)
about 45 minutes on 2 cores: ~23 of training, ~17 evaluating 34 checkpoints x 2 weights x 4
splits. Prints two markdown tables (per checkpoint; per rule) and writes them with the numbers to
`<out>/checkpoint_selection.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from small_data import NUM_IMAGES, available_augmentations, evaluate_checkpoints, train

from rfcn_tf.data.sources.voc_xml import default_voc_root
from rfcn_tf.engine.best_checkpoint import BestCheckpoint

SPLITS = ("valA", "valB", "val", "test")


def make_voc_root(out: str, bccd: str) -> str:
    """`<out>/voc_root`: BCCD's images and annotations (links) and split files plus valA/valB."""
    root = os.path.join(out, "voc_root")
    main = os.path.join(root, "ImageSets", "Main")
    os.makedirs(main, exist_ok=True)
    for folder in ("Annotations", "JPEGImages"):
        link = os.path.join(root, folder)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(bccd, folder)), link)
    source = os.path.join(bccd, "ImageSets", "Main")
    for name in ("train", "val", "test"):
        with open(os.path.join(source, f"{name}.txt"), encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(main, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    ids = sorted(line.strip() for line in text_lines(os.path.join(source, "val.txt")))
    for name, half in (("valA", ids[0::2]), ("valB", ids[1::2])):
        with open(os.path.join(main, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(half) + "\n")
    return root


def text_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def pick(rows: list[dict], weights: str, split: str, patience: int) -> tuple[dict, list[dict]]:
    """The checkpoint `BestCheckpoint` keeps when validating on `split` with `patience`.

    Args:
      rows: `evaluate_checkpoints` rows, ascending steps (one validation each).

    Returns:
      (the picked row, the rows validated before the early stop ended the run).
    """
    with tempfile.TemporaryDirectory() as tmp:
        best = BestCheckpoint(tmp, metric="coco/AP50", patience=patience)
        reached = []
        for row in rows:
            reached.append(row)
            best.update(row["step"], row[weights][split][0])
            if best.should_stop():
                break
    return next(r for r in rows if r["step"] == best.best_step), reached


def rule_rows(rows: list[dict], patiences, weight_sets) -> list[dict]:
    """Per rule: the val-only score (pick on one half, score on the other, both ways) and,
    for reference, the test AP50 of the pick on all of val and the hindsight best on test among
    the checkpoints the rule reached."""
    out = []
    for weights in weight_sets:
        for patience in patiences:
            halves = []
            for a, b in (("valA", "valB"), ("valB", "valA")):
                picked, _ = pick(rows, weights, a, patience)
                halves.append((picked[weights][b][0], picked["step"]))
            picked, reached = pick(rows, weights, "val", patience)
            hindsight = max(reached, key=lambda r: r[weights]["test"][0])
            out.append(
                {
                    "weights": weights,
                    "patience": patience,
                    "a_to_b": halves[0],
                    "b_to_a": halves[1],
                    "val_only": (halves[0][0] + halves[1][0]) / 2,
                    "val_pick_step": picked["step"],
                    "val_pick_val": picked[weights]["val"][0],
                    "stop_step": reached[-1]["step"],
                    "test": picked[weights]["test"][0],
                    "hindsight_step": hindsight["step"],
                    "hindsight_test": hindsight[weights]["test"][0],
                }
            )
    return out


def format_tables(rows: list[dict], rules: list[dict]) -> str:
    weight_sets = [w for w in ("raw", "ema") if w in rows[0]]
    head = " | ".join(f"{w} {s}" for w in weight_sets for s in SPLITS)
    lines = [
        "AP50 of every checkpoint (valA 44, valB 43, val 87, test 72 images)",
        "",
        f"| step | {head} |",
        "|---:|" + "---:|" * (len(weight_sets) * len(SPLITS)),
    ]
    for r in rows:
        cells = " | ".join(f"{r[w][s][0]:.3f}" for w in weight_sets for s in SPLITS)
        lines.append(f"| {r['step']} | {cells} |")
    lines += [
        "",
        "Rules, chosen on val alone (the val-only column); test for reference",
        "",
        "| weights | early stop patience | valA->valB (pick step) | valB->valA (pick step) | "
        "val-only mean | on val: pick step (val AP50), stop step | test AP50 of the pick | "
        "hindsight best on test (step) | gap |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for q in rules:
        lines.append(
            f"| {q['weights']} | {q['patience'] or 'off'} | {q['a_to_b'][0]:.3f} ({q['a_to_b'][1]})"
            f" | {q['b_to_a'][0]:.3f} ({q['b_to_a'][1]}) | {q['val_only']:.3f} | "
            f"{q['val_pick_step']} ({q['val_pick_val']:.3f}), {q['stop_step']} | {q['test']:.3f} | "
            f"{q['hindsight_test']:.3f} ({q['hindsight_step']}) | "
            f"{q['hindsight_test'] - q['test']:+.3f} |"
        )
    best = max(rules, key=lambda q: q["val_only"])
    lines += [
        "",
        f"best on val alone: {best['weights']} weights, early stop "
        f"{best['patience'] or 'off'} (val-only {best['val_only']:.3f}); its pick on val scored "
        f"test AP50 {best['test']:.3f}, {best['hindsight_test'] - best['test']:+.3f} from the "
        "hindsight best (issue 16 target: within 0.02)",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5924, help="scheduled training steps")
    parser.add_argument("--eval-every-epochs", type=float, default=10.0)
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--patience", type=int, nargs="+", default=[0, 3, 5, 8, 12])
    parser.add_argument("--out", default="runs/checkpoint_selection")
    parser.add_argument(
        "--analyse-only", action="store_true", help="reuse <out>/checkpoints.json (no training)"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cached = os.path.join(args.out, "checkpoints.json")
    if not args.analyse_only:
        root = make_voc_root(args.out, str(default_voc_root()))
        epochs = args.steps * 2 / NUM_IMAGES  # batch 2
        every = max(1, math.ceil(round(args.eval_every_epochs * NUM_IMAGES / 2, 6)))
        work_dir = os.path.join(args.out, "run")
        overrides = [
            f"data.voc_root={root}",
            f"train.epochs={epochs!r}",
            f"train.warmup_epochs={epochs * 0.06!r}",
            f"train.eval_every_epochs={args.eval_every_epochs!r}",
            f"train.checkpoint_every={every}",
            "train.keep_checkpoints=1000",
            "train.early_stop_patience=0",
            f"train.ema_decay={args.ema_decay!r}",
            f"train.work_dir={work_dir}",
            "train.num_summary_images=0",
            *available_augmentations(),
        ]
        run = train("bccd35", overrides, budget_s=math.inf, evaluate=False)
        print(f"trained {run['steps']} steps in {run['train_seconds']:.0f} s", flush=True)
        rows = evaluate_checkpoints(work_dir, SPLITS, ema_decay=args.ema_decay)
        with open(cached, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    with open(cached, encoding="utf-8") as f:
        rows = json.load(f)
    rules = rule_rows(rows, args.patience, [w for w in ("raw", "ema") if w in rows[0]])
    table = format_tables(rows, rules)
    print(table)
    with open(os.path.join(args.out, "checkpoint_selection.json"), "w", encoding="utf-8") as f:
        json.dump({"rules": rules, "table": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
