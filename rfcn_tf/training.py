"""A training run as a short sequence of named steps (what ``python -m rfcn_tf.train`` calls).

    cfg = training.load_run_config(config, overrides, work_dir=..., strategy=...)
    report = training.run(cfg, progress=True, evaluate=True, export=True, export_dir=None)
    print(training.format_report(report))

`run` does, in order: `setup` (strategy, mixed precision, class names, the work-dir check
and lock, config.yaml/classes.txt through `rfcn_tf.run_dir`), `build_model`, `fit` (the
engine's schemes with checkpoints, validation/best/EMA hooks, TensorBoard), `finalize` (the
weights the run delivers: best checkpoint, else EMA, else last), `evaluate` (the evaluator's
`evaluate_split`, as the evaluate CLI) and `export` (a SavedModel under the work dir,
`<work_dir>/export/<name>/<version>`, unless an export folder is given).

Work dir layout: `rfcn_tf/run_dir.py`. Errors are `rfcn_tf.errors` types (one line each in the
CLI).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
import yaml
from tqdm.contrib.logging import logging_redirect_tqdm

from rfcn_tf import export as export_lib
from rfcn_tf import run_dir
from rfcn_tf.config import load_config, model_resume_diff, validate
from rfcn_tf.data.anchor_stats import resolve_auto_anchors
from rfcn_tf.data.pipeline import build_dataset, evaluation_scale, source_info
from rfcn_tf.engine import callbacks as cb
from rfcn_tf.engine import checkpoints as ckpt_lib
from rfcn_tf.engine.callbacks import format_duration
from rfcn_tf.engine.features import TrainingFeatures, resolve_schedule
from rfcn_tf.engine.optimizer import build_lr_schedule, build_optimizer, configure_mixed_precision
from rfcn_tf.engine.schemes import build_stages, run_training
from rfcn_tf.engine.strategy import build_strategy, is_chief
from rfcn_tf.errors import TrainingError
from rfcn_tf.evaluation.evaluator import evaluate_split, format_summary
from rfcn_tf.model.builder import build_detector

__all__ = [
    "RunContext",
    "build_model",
    "check_work_dir",
    "evaluate",
    "export",
    "export_dir_for",
    "fit",
    "format_report",
    "load_run_config",
    "run",
    "setup",
]

logger = logging.getLogger("rfcn_tf.train")

_DEFAULT_EXPORT_DIR = "export"  # ExportConfig.out_dir's default: under the work dir


def load_run_config(
    config: str | None,
    overrides: Sequence[str] = (),
    *,
    work_dir: str | None = None,
    strategy: str | None = None,
):
    """The resolved, validated config of a run (epochs turned into steps, `auto` anchors into
    numbers), before anything is written; `--print-config` prints this."""
    overrides = list(overrides)
    if work_dir:
        overrides.append(f"train.work_dir={work_dir}")
    if strategy:
        overrides.append(f"train.strategy={strategy}")
    cfg = resolve_auto_anchors(resolve_schedule(load_config(config, overrides)))
    validate(cfg)
    return cfg


def export_dir_for(cfg, export_dir: str | None = None) -> str:
    """Where the end-of-training export goes: `export_dir`, else a non-default
    `export.out_dir`, else `<work_dir>/export`."""
    if export_dir:
        return os.path.abspath(export_dir)
    if cfg.export.out_dir != _DEFAULT_EXPORT_DIR:
        return os.path.abspath(cfg.export.out_dir)
    return os.path.abspath(os.path.join(cfg.train.work_dir, _DEFAULT_EXPORT_DIR))


def check_work_dir(work_dir: str, cfg, *, class_names: Sequence[str]) -> None:
    """Refuses to resume a run whose saved model config or classes differ from this one's.

    Raises:
        TrainingError: naming the differing keys (the checkpoints would not fit).
    """

    path = os.path.join(work_dir, run_dir.RUN_CONFIG_NAME)
    checkpoints = os.path.join(work_dir, run_dir.CHECKPOINTS_DIR)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(checkpoints, "checkpoint"))):
        return
    with open(path, encoding="utf-8") as f:
        saved = yaml.safe_load(f) or {}
    diff = model_resume_diff(saved.get("model", {}), cfg)  # RESUME_SAFE settings may differ
    saved_names = run_dir.read_class_names(work_dir)
    if saved_names is not None and saved_names != list(class_names):
        diff.append(f"classes: {saved_names} -> {list(class_names)}")
    if diff:
        raise TrainingError(
            f"{work_dir} holds checkpoints of a run with another model: "
            + "; ".join(diff[:8])
            + ". Resume with the same config, or pass a new --work-dir to start afresh"
        )


@dataclasses.dataclass
class RunContext:
    """What the steps share: the config, distribution, classes and the run's folders."""

    cfg: Any
    strategy: Any
    chief: bool
    policy: str
    class_names: list[str]
    work_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    lock: run_dir.WorkDirLock
    model: Any = None
    features: Any = None
    writer: Any = None
    started: float = dataclasses.field(default_factory=time.perf_counter)


def setup(cfg) -> RunContext:
    """Strategy, precision, classes; checks the work dir, takes its lock (chief only) and
    writes config.yaml + classes.txt. The caller releases `ctx.lock`."""

    tcfg = cfg.train
    keras.utils.set_random_seed(tcfg.seed)
    strategy = build_strategy(tcfg.strategy)
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if tcfg.batch_size % replicas:
        raise TrainingError(
            f"train.batch_size={tcfg.batch_size} (the global batch) must be a "
            f"multiple of the {replicas} replicas of the '{tcfg.strategy}' strategy"
        )
    policy = configure_mixed_precision(tcfg.mixed_precision)
    info = source_info(cfg.data, split=cfg.data.train_split)
    class_names = list(info.class_names)
    work_dir = tcfg.work_dir
    checkpoint_dir = os.path.join(work_dir, run_dir.CHECKPOINTS_DIR)
    if not os.path.isfile(os.path.join(checkpoint_dir, "checkpoint")) and tcfg.init_checkpoint:
        prefix = ckpt_lib.resolve_checkpoint(tcfg.init_checkpoint, what="train.init_checkpoint")
        ckpt_lib.check_num_classes(
            ckpt_lib.read_checkpoint_meta(prefix), len(class_names), what="train.init_checkpoint"
        )  # fail before the slow part
    check_work_dir(work_dir, cfg, class_names=class_names)
    lock = run_dir.WorkDirLock(work_dir, enabled=chief).acquire()
    if chief:
        try:
            run_dir.write_run_files(work_dir, cfg, class_names=class_names)
        except BaseException:
            lock.release()
            raise
    return RunContext(
        cfg=cfg,
        strategy=strategy,
        chief=chief,
        policy=policy,
        class_names=class_names,
        work_dir=work_dir,
        checkpoint_dir=checkpoint_dir,
        tensorboard_dir=os.path.join(work_dir, "tensorboard", "train"),
        lock=lock,
    )


def build_model(ctx: RunContext) -> None:
    """The detector (in the strategy's scope), the TensorBoard writer and the engine's
    validation/best/EMA/data-resume features."""

    with ctx.strategy.scope():
        ctx.model = build_detector(ctx.cfg.model, num_classes=len(ctx.class_names))
    ctx.writer = (
        tf.summary.create_file_writer(ctx.tensorboard_dir)
        if ctx.chief
        else tf.summary.create_noop_writer()
    )
    ctx.features = TrainingFeatures(
        ctx.cfg,
        model=ctx.model,
        strategy=ctx.strategy,
        class_names=ctx.class_names,
        writer=ctx.writer if ctx.chief else None,
        work_dir=ctx.work_dir,
    )


def _stage_boundaries(lr_steps: Sequence[int], steps: int) -> list[int]:
    """`train.lr_steps` within one stage (stage-relative; later ones do not apply)."""
    inside = [int(b) for b in lr_steps if 0 < int(b) < steps]
    dropped = [int(b) for b in lr_steps if not 0 < int(b) < steps]
    if dropped:
        logger.warning(
            "train.lr_steps %s lie outside a stage of %d steps and are ignored there",
            dropped,
            steps,
        )
    return inside


def _first_batch(dataset) -> dict:
    for batch in dataset.take(1):
        return {k: v.numpy() for k, v in batch.items()}
    raise TrainingError("the validation split yielded no image for the TensorBoard previews")


def fit(ctx: RunContext, *, progress: bool = True):
    """Trains (resuming from the work dir's checkpoints); returns the engine's result."""

    cfg, tcfg, model = ctx.cfg, ctx.cfg.train, ctx.model
    num_classes = len(ctx.class_names)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # batch_size is the GLOBAL batch: the pipeline batches the per-replica share of it.
        return build_dataset(
            cfg.data,
            split=cfg.data.train_split,
            training=True,
            batch_size=tcfg.batch_size,
            input_context=context,
        )

    def optimizer_fn(variables, steps):
        schedule = build_lr_schedule(
            base_lr=tcfg.lr,
            total_steps=steps,
            schedule=tcfg.schedule,
            boundaries=_stage_boundaries(tcfg.lr_steps, steps) if tcfg.schedule == "step" else (),
            decay=tcfg.lr_decay,
            warmup_steps=min(tcfg.warmup_steps, steps - 1),
            warmup_factor=tcfg.warmup_factor,
        )
        return build_optimizer(
            variables=variables,
            learning_rate=schedule,
            momentum=tcfg.momentum,
            weight_decay=tcfg.weight_decay,
            clip_norm=tcfg.clip_norm,
            loss_scaling=ctx.policy == "mixed_float16",
        )

    preview = None
    if ctx.chief and tcfg.num_summary_images > 0:
        preview = _first_batch(
            build_dataset(
                cfg.data,
                split=cfg.data.val_split,
                training=False,
                batch_size=tcfg.num_summary_images,
            )
        )

    def hooks_fn(stage, total_steps):
        hooks = ctx.features.hooks() + [cb.SummaryHook(ctx.writer, every=tcfg.log_every)]
        if preview is not None:
            hooks.append(
                cb.ImageSummaryHook(
                    ctx.writer,
                    detect_fn=model.detect,
                    images=preview["images"],
                    image_shapes=preview["image_shapes"],
                    class_names=ctx.class_names,
                    every=tcfg.checkpoint_every,
                )
            )
        if ctx.chief:
            hooks.append(
                cb.ProgressHook(total_steps=total_steps, disable=None if progress else True)
            )
            hooks.append(cb.LoggingHook(total_steps=total_steps, every=tcfg.log_every))
        return hooks

    stages = build_stages(tcfg.scheme, steps=tcfg.steps, stage_steps=tcfg.stage_steps)
    logger.info(
        "training %s on %s (%d classes: %s), %d steps of %d images (%s scheme), "
        "strategy %s with %d replica(s), policy %s; work dir %s",
        cfg.model.backbone.name,
        cfg.data.source,
        num_classes,
        ", ".join(ctx.class_names[:6]),
        sum(s.steps for s in stages),
        tcfg.batch_size,
        tcfg.scheme,
        tcfg.strategy,
        ctx.strategy.num_replicas_in_sync,
        ctx.policy,
        ctx.work_dir,
    )
    with logging_redirect_tqdm(loggers=[logging.getLogger("rfcn_tf")]):
        result = run_training(
            model=model,
            strategy=ctx.strategy,
            dataset_fn=dataset_fn,
            stages=stages,
            optimizer_fn=optimizer_fn,
            checkpoint_dir=ctx.checkpoint_dir,
            num_classes=num_classes,
            global_batch_size=tcfg.batch_size,
            checkpoint_every=tcfg.checkpoint_every,
            keep_checkpoints=tcfg.keep_checkpoints,
            hooks_fn=hooks_fn,
            init_checkpoint=tcfg.init_checkpoint,
            proposal_model_fn=lambda: build_detector(cfg.model, num_classes=num_classes),
            **ctx.features.run_training_kwargs(),
        )
    ctx.writer.flush()
    return result


def evaluate(ctx: RunContext, *, delivered: str, weights: str, progress: bool = True) -> tuple:
    """The delivered weights on the evaluation split, reports in `<work_dir>/eval/<split>`;
    returns (metrics, folder)."""
    cfg = ctx.cfg
    split = cfg.eval.split or cfg.data.val_split
    out_dir = os.path.join(ctx.work_dir, "eval", split)
    if cfg.eval.score_threshold is not None:
        ctx.model.postprocessor.config.score_threshold = float(cfg.eval.score_threshold)
    metrics = evaluate_split(
        cfg,
        ctx.model.detect,
        split=split,
        out_dir=out_dir,
        max_images=cfg.eval.max_images,
        progress=progress,
        info={
            "checkpoint": delivered,
            "weights": weights,
            "split": split,
            "work_dir": ctx.work_dir,
        },
    )
    logger.info("evaluation on %s: %s", split, format_summary(metrics))
    return metrics, out_dir


def export(ctx: RunContext, *, export_dir: str | None = None) -> str:
    """A SavedModel of the delivered weights with the pure-TF PS-RoI pooling (stock ops),
    resized at the evaluation scale; returns the version folder."""
    cfg, model = ctx.cfg, ctx.model
    if cfg.model.head.psroi_impl != "tf":
        tf_cfg = dataclasses.replace(
            cfg.model, head=dataclasses.replace(cfg.model.head, psroi_impl="tf")
        )
        exported = build_detector(tf_cfg, num_classes=len(ctx.class_names))
        exported.set_weights(model.get_weights())
    else:
        exported = model
    return str(
        export_lib.export_saved_model(
            exported,
            class_names=ctx.class_names,
            out_dir=export_dir_for(cfg, export_dir),
            model_name=cfg.export.model_name,
            version=cfg.export.version,
            min_size=int(evaluation_scale(cfg.data.scales)),
            max_size=int(cfg.data.max_size),
        )
    )


def run(
    cfg,
    *,
    progress: bool = True,
    evaluate_at_end: bool = True,
    export_at_end: bool = True,
    export_dir: str | None = None,
) -> dict[str, Any]:
    """Trains, evaluates and exports; returns what happened (paths, metrics) for the report."""
    ctx = setup(cfg)
    try:
        build_model(ctx)
        started = time.perf_counter()
        result = fit(ctx, progress=progress)
        report: dict[str, Any] = {
            "work_dir": ctx.work_dir,
            "checkpoint": result.checkpoint,
            "tensorboard": ctx.tensorboard_dir,
            "step": result.step,
            "train_seconds": time.perf_counter() - started,
            "resumed_from": result.resumed_from,
            "last_logs": result.last_logs,
            "metrics": None,
            "metrics_dir": None,
            "export": None,
        }
        if not ctx.chief:
            return report
        final = ctx.features.finalize()  # best checkpoint, else EMA, else the last weights
        delivered = final["best"]["checkpoint"] if final["best"] else result.checkpoint
        report.update(
            final_weights=final["weights"],
            best=final["best"],
            best_line=ctx.features.summary_line(final),
            stop_reason=result.stop_reason,
        )
        if evaluate_at_end and cfg.train.evaluate_at_end:
            report["metrics"], report["metrics_dir"] = evaluate(
                ctx, delivered=delivered, weights=final["weights"], progress=progress
            )
        if export_at_end and cfg.train.export_at_end:
            report["export"] = export(ctx, export_dir=export_dir)
        else:
            report["export_skipped"] = (
                "--no-export" if not export_at_end else "train.export_at_end=false"
            )
        report["total_seconds"] = time.perf_counter() - ctx.started
        return report
    finally:
        ctx.lock.release()


def format_report(report: dict[str, Any]) -> str:
    """The lines the train CLI prints: where everything went, then a one-line summary."""
    lines = [
        f"work dir:     {report['work_dir']}",
        f"checkpoints:  {os.path.join(report['work_dir'], run_dir.CHECKPOINTS_DIR)}"
        f" (latest {report['checkpoint']})",
        f"tensorboard:  tensorboard --logdir {os.path.dirname(report['tensorboard'])}",
    ]
    metrics = report.get("metrics")
    lines.append(
        f"metrics:      {os.path.join(report['metrics_dir'], 'metrics.json')}"
        if metrics
        else "metrics:      (evaluation skipped)"
    )
    lines.append(
        f"export:       {report['export']}"
        if report.get("export")
        else f"export:       skipped ({report.get('export_skipped', 'not run')})"
    )
    if report.get("best_line"):
        lines.append(report["best_line"])
    summary = f"trained to step {report['step']} in {format_duration(report['train_seconds'])}"
    if report.get("stop_reason"):
        summary += " (stopped early)"
    if report.get("resumed_from"):
        summary += f" (resumed from {os.path.basename(report['resumed_from'])})"
    if metrics:
        summary += (
            f"; mAP@0.5 {metrics['voc2010']['mAP']:.4f} (VOC all-point), "
            f"COCO AP50 {metrics['coco']['AP50']:.4f}, AP {metrics['coco']['AP']:.4f} "
            f"on {metrics['num_images']} images"
        )
    if "total_seconds" in report:
        summary += f"; total {format_duration(report['total_seconds'])}"
    return "\n".join(lines + [summary])
