"""BCCD-35: today's fixed-step recipe vs the small-data recipe, same wall-clock budget.

Both train on BCCD-35 (the first 35 images of BCCD `train`, sorted by id:
`data.max_train_images=35`) and are evaluated on BCCD `test` (72 images):

  (a) today's recipe: the bccd preset's model and training settings (lr 0.02, cosine, batch 2,
      photometric jitter and flips) for a fixed number of steps, the LAST checkpoint;
  (b) the new recipe, configs/bccd35.yaml: a schedule in epochs, validation on BCCD `val`
      (87 images) keeping the best checkpoint (early stop as the preset sets it: off), and the
      preset's augmentations (vertical flip, rot90, scale jitter, random crop) plus any `data.*`
      field listed in AUGMENTATIONS that DataConfig has when this runs (printed).

Same budget: each run's training loop is stopped when `--budget-minutes` of wall-clock time
have passed since its first step (validation time counts for (b)). The step counts are chosen
so that (a) ends its cosine schedule inside the budget: seconds per step are measured first in
a short calibration run (`--calibration-steps`, not counted), unless `--steps` gives them;
(b) is scheduled for `--b-step-fraction` of (a)'s steps (the rest of the budget pays for its
validations) and may stop earlier (an early stop, where configured) or be cut by the budget (it
still delivers its best checkpoint). After training, every checkpoint (b) kept is evaluated on
`test` too, so the table shows the hindsight-best checkpoint on test next to the one validation
picked.

    python benchmarks/small_data.py --budget-minutes 10 [--out runs/small_data]

(about 2.5 x the budget in all on 2 cores: calibration, both runs, their test evaluations and
the hindsight pass). `--steps 6000 --budget-minutes 50` gives (a) the bccd preset's full 6000
steps (~340 epochs of 35 images, the issue's overfitting setting) and (b) the same 50 minutes
(on a quiet machine at 0.24 s per step, `--budget-minutes 30` alone already gives (a) ~7400).

prints one markdown table (test AP50 / AP, steps, wall time) and writes it with the numbers to
`<out>/small_data.json`. Needs the BCCD folder (`../shared/data/BCCD` relative to the
repository, or $RFCN_BCCD_DIR).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rfcn_tf.config import DataConfig
from rfcn_tf.engine.loop import Hook

# data.* augmentation fields the new recipe turns on when DataConfig has them (issue 16.3):
# name -> value for a field whose default is not a bool (bool fields are set to true).
AUGMENTATIONS = {
    "scale_jitter": [0.8, 1.25],
    "random_crop": True,
    "vertical_flip": True,
    "random_vertical_flip": True,
    "rot90": True,
    "random_rot90": True,
    "rotate90": True,
}
NUM_IMAGES = 35


def available_augmentations() -> list[str]:
    """`--set` overrides for the AUGMENTATIONS that DataConfig has (bool fields -> true)."""
    defaults = {f.name: f for f in dataclasses.fields(DataConfig)}
    overrides = []
    for name, value in AUGMENTATIONS.items():
        field = defaults.get(name)
        if field is None:
            continue
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()
        )
        if isinstance(default, bool):
            overrides.append(f"data.{name}=true")
        elif not isinstance(value, bool):
            overrides.append(f"data.{name}={json.dumps(value)}")
    return overrides


def recipe_a(steps: int, work_dir: str, extra=()) -> list[str]:
    """Overrides of the bccd preset: today's recipe on BCCD-35, `steps` fixed, last weights.

    Its augmentation stays the one issue 16 measured (horizontal flip, photometric jitter): the
    bccd preset has since added vertical flips and quarter turns, turned off here."""
    return [
        "data.train_split=train",
        "data.vertical_flip=false",
        "data.rot90=false",
        f"data.max_train_images={NUM_IMAGES}",
        "data.val_split=val",
        "train.epochs=null",
        "train.warmup_epochs=null",
        f"train.steps={steps}",
        f"train.warmup_steps={min(205, max(1, steps // 10))}",
        "train.eval_every=0",
        f"train.checkpoint_every={steps}",
        "eval.split=test",
        f"train.work_dir={work_dir}",
        "train.num_summary_images=0",
        *extra,
    ]


def recipe_b(steps: int, work_dir: str, extra=()) -> list[str]:
    """Overrides of the bccd35 preset: `steps` as epochs of the 35 images, validation every
    tenth of them, a checkpoint at every validation (all kept, for the hindsight check)."""
    epochs = steps * 2 / NUM_IMAGES  # batch 2
    eval_epochs = max(epochs / 10, 2 / NUM_IMAGES)
    eval_steps = max(1, math.ceil(round(eval_epochs * NUM_IMAGES / 2, 6)))
    return [
        f"train.epochs={epochs!r}",
        f"train.warmup_epochs={epochs * 0.06!r}",
        f"train.eval_every_epochs={eval_epochs!r}",
        f"train.checkpoint_every={eval_steps}",
        "train.keep_checkpoints=1000",
        f"train.work_dir={work_dir}",
        "train.num_summary_images=0",
        *available_augmentations(),
        *extra,
    ]


class BudgetHook(Hook):
    """Stops the training loop once `seconds` have passed since its first step began; records
    the step times."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = None
        self.times: list[float] = []

    def on_train_begin(self, loop) -> None:
        self.started = time.perf_counter()

    def after_step(self, loop, step, logs) -> None:
        now = time.perf_counter()
        self.times.append(now)
        if now - self.started >= self.seconds:
            loop.request_stop(f"wall-clock budget of {self.seconds:.0f} s")

    def startup_seconds(self) -> float:
        """From the loop's start to the end of its first step (tracing, first batches)."""
        return self.times[0] - self.started

    def seconds_per_step(self, skip: int = 3) -> float:
        """Steady seconds per step: from step `skip` (after tracing) to the last."""
        if len(self.times) <= skip + 1:
            raise RuntimeError("too few steps to time; raise --calibration-steps")
        return (self.times[-1] - self.times[skip]) / (len(self.times) - 1 - skip)


def train(preset: str, overrides: list[str], *, budget_s: float, evaluate: bool = True) -> dict:
    """One run through rfcn_tf.training's steps with the budget hook added; returns its numbers."""
    from rfcn_tf import training

    cfg = training.load_run_config(preset, overrides)
    shutil.rmtree(cfg.train.work_dir, ignore_errors=True)  # a fresh run, never a resume
    ctx = training.setup(cfg)
    try:
        training.build_model(ctx)
        hook = BudgetHook(budget_s)
        base_hooks = ctx.features.hooks
        ctx.features.hooks = lambda: base_hooks() + [hook]
        started = time.perf_counter()
        result = training.fit(ctx, progress=False)
        seconds = time.perf_counter() - started
        final = ctx.features.finalize()
        delivered = final["best"]["checkpoint"] if final["best"] else result.checkpoint
        out = {
            "preset": preset,
            "overrides": overrides,
            "work_dir": ctx.work_dir,
            "scheduled_steps": cfg.train.steps,
            "steps": result.step,
            "train_seconds": seconds,
            "stop_reason": result.stop_reason,
            "weights": final["weights"],
            "checkpoint": delivered,
            "best_step": (final["best"] or {}).get("step"),
            "best_val": (final["best"] or {}).get("value"),
            "hook": hook,
        }
        if evaluate:
            metrics, _ = training.evaluate(
                ctx, delivered=delivered, weights=final["weights"], progress=False
            )
            out.update(ap50=metrics["coco"]["AP50"], ap=metrics["coco"]["AP"])
        return out
    finally:
        ctx.lock.release()


def evaluate_checkpoints(
    work_dir: str, splits=("test",), *, ema_decay: float | None = None
) -> list[dict]:
    """AP50/AP of every checkpoint a run kept (ckpt-*) on each split of its dataset, by step.

    Returns rows {"checkpoint", "step", "raw": {split: [AP50, AP]}} and, with `ema_decay` (the
    run's train.ema_decay), "ema": the same for the checkpoint's EMA shadows."""
    import tensorflow as tf

    from rfcn_tf import run_dir
    from rfcn_tf.config import load_config
    from rfcn_tf.engine.ema import WeightEMA
    from rfcn_tf.evaluation.evaluator import evaluate_split
    from rfcn_tf.inference.backends import load_checkpoint_model

    cfg = load_config(os.path.join(work_dir, run_dir.RUN_CONFIG_NAME), old_layout="migrate")
    names = run_dir.read_class_names(work_dir)
    state = tf.train.get_checkpoint_state(os.path.join(work_dir, run_dir.CHECKPOINTS_DIR))
    rows = []
    for prefix in state.all_model_checkpoint_paths if state else []:
        model, _ = load_checkpoint_model(cfg, prefix, num_classes=len(names), dataset_desc="BCCD")
        row = {"checkpoint": prefix, "step": int(prefix.rsplit("-", 1)[-1])}
        for weights in ("raw", "ema") if ema_decay else ("raw",):
            if weights == "ema":
                ema = WeightEMA(model, ema_decay)
                tf.train.Checkpoint(ema=ema.checkpointable()).restore(prefix).expect_partial()
                ema.copy_to_model()
            row[weights] = {}
            for split in splits:
                metrics = evaluate_split(
                    cfg, model.detect, split=split, out_dir=None, progress=False
                )
                row[weights][split] = [metrics["coco"]["AP50"], metrics["coco"]["AP"]]
        rows.append(row)
    return rows


def test_every_checkpoint(run: dict) -> list[dict]:
    """Test AP50/AP of every checkpoint the run kept (ckpt-*), by step."""
    return [
        {"checkpoint": r["checkpoint"], "step": r["step"], "ap50": ap50, "ap": ap}
        for r in evaluate_checkpoints(run["work_dir"])
        for ap50, ap in [r["raw"]["test"]]
    ]


def format_table(a: dict, b: dict, rows: list[dict], budget_min: float) -> str:
    hindsight = max(rows, key=lambda r: r["ap50"]) if rows else None
    lines = [
        f"BCCD-35 (first {NUM_IMAGES} ids of BCCD train) -> BCCD test (72 images), "
        f"budget {budget_min:g} min of training per recipe",
        "",
        "| recipe | weights | steps run / scheduled | train wall s | test AP50 | test AP |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines.append(
        f"| (a) today (bccd settings, fixed steps) | last | {a['steps']} / "
        f"{a['scheduled_steps']} | {a['train_seconds']:.0f} | {a['ap50']:.4f} | "
        f"{a['ap']:.4f} |"
    )
    picked = (
        f"best on val (step {b['best_step']}, val AP50 {b['best_val'] or 0:.4f})"
        if b["best_step"] is not None
        else b["weights"]
    )
    lines.append(
        f"| (b) new (bccd35: epochs, val-picked, augmentations) | "
        f"{picked} | {b['steps']} / {b['scheduled_steps']} | "
        f"{b['train_seconds']:.0f} | {b['ap50']:.4f} | {b['ap']:.4f} |"
    )
    if hindsight is not None:
        lines.append(
            f"| (b) hindsight: best kept checkpoint on TEST | step {hindsight['step']} "
            f"| | | {hindsight['ap50']:.4f} | {hindsight['ap']:.4f} |"
        )
    gain = b["ap50"] - a["ap50"]
    lines += [
        "",
        f"(b) - (a): AP50 {gain:+.4f}, AP {b['ap'] - a['ap']:+.4f} (issue 16 target: "
        f">= +0.05 AP50: {'met' if gain >= 0.05 else 'NOT met'})",
    ]
    if hindsight is not None:
        gap = hindsight["ap50"] - b["ap50"]
        lines.append(
            f"hindsight-best - validation-picked: AP50 {gap:+.4f} (target <= 0.02: "
            f"{'met' if gap <= 0.02 else 'NOT met'})"
        )
        lines += [
            "",
            "(b)'s kept checkpoints on test: "
            + ", ".join(
                f"step {r['step']} {r['ap50']:.3f}" for r in sorted(rows, key=lambda r: r["step"])
            ),
        ]
    lines.append(
        f"(b) stop: {b['stop_reason'] or 'schedule end'}; augmentations: "
        f"{', '.join(available_augmentations()) or 'none beyond bccd (flip, photometric)'}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget-minutes", type=float, default=10.0, help="wall-clock training time of EACH recipe"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="(a)'s step count; default: budget / measured seconds per step",
    )
    parser.add_argument(
        "--calibration-steps",
        type=int,
        default=25,
        help="steps of the timing run that sets --steps (not counted)",
    )
    parser.add_argument(
        "--b-step-fraction",
        type=float,
        default=0.8,
        help="(b)'s scheduled steps as a share of (a)'s (the rest of the budget "
        "pays for validation)",
    )
    parser.add_argument("--out", default="runs/small_data", help="work dirs and the JSON")
    parser.add_argument(
        "--set-a",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override of recipe (a) (repeatable)",
    )
    parser.add_argument(
        "--set-b",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override of recipe (b) (repeatable)",
    )
    parser.add_argument(
        "--no-hindsight", action="store_true", help="skip testing every kept checkpoint of (b)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budget_s = args.budget_minutes * 60.0
    os.makedirs(args.out, exist_ok=True)

    steps = args.steps
    if steps is None:
        calib = train(
            "bccd",
            recipe_a(args.calibration_steps, os.path.join(args.out, "calib"), args.set_a),
            budget_s=budget_s,
            evaluate=False,
        )
        sps = calib["hook"].seconds_per_step()
        startup = calib["hook"].startup_seconds()
        steps = max(10, int((budget_s - startup) / sps))
        print(
            f"calibration: {startup:.1f} s to the first step, then {sps:.3f} s per step -> "
            f"(a) {steps} steps in {args.budget_minutes:g} min",
            flush=True,
        )
    a = train(
        "bccd", recipe_a(steps, os.path.join(args.out, "a_today"), args.set_a), budget_s=budget_s
    )
    print(f"(a) step {a['steps']}: test AP50 {a['ap50']:.4f} AP {a['ap']:.4f}", flush=True)
    steps_b = max(10, int(steps * args.b_step_fraction))
    b = train(
        "bccd35", recipe_b(steps_b, os.path.join(args.out, "b_new"), args.set_b), budget_s=budget_s
    )
    print(
        f"(b) step {b['steps']} (best {b['best_step']}): test AP50 {b['ap50']:.4f} "
        f"AP {b['ap']:.4f}",
        flush=True,
    )
    rows = [] if args.no_hindsight else test_every_checkpoint(b)
    table = format_table(a, b, rows, args.budget_minutes)
    print(table)
    for run in (a, b):
        run.pop("hook")
    with open(os.path.join(args.out, "small_data.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"a": a, "b": b, "b_checkpoints_on_test": rows, "table": table},
            f,
            indent=1,
            default=str,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
