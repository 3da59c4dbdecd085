"""Train R-FCN: ``python -m rfcn_tf.train``.

With no arguments it trains the embedded default (``configs/shapes_tiny.yaml``: synthetic shapes,
small backbone, CPU), evaluates the result on the shapes validation split and exports a
SavedModel, printing where everything went.

Examples::

    python -m rfcn_tf.train
    python -m rfcn_tf.train --config bccd --set data.voc_root=/data/BCCD
    python -m rfcn_tf.train --config voc07_resnet101 --strategy mirrored --work-dir runs/voc
    python -m rfcn_tf.train --set train.scheme=alternating --set train.stage_steps=[400,400,200,200]

Rerunning the same command after an interruption resumes from the work dir's latest checkpoint
(step, weights, optimizer slots, schedule position; the alternating scheme's stage too).
Multi-worker training: start the same command on every worker with ``--strategy multi_worker``
and a ``TF_CONFIG`` naming the cluster and the worker's index.

Work dir layout (``--work-dir`` or ``train.work_dir``)::

    config.yaml            the resolved config of the run (evaluate/predict find it there)
    checkpoints/ckpt-N     tf.train checkpoints (last ``train.keep_checkpoints`` kept)
    tensorboard/train      TensorBoard events: losses, lr, images/s, validation detections
    eval/<split>/          metrics.json, metrics.md, PR curves, detections.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from typing import Any, Optional, Sequence

from rfcn_tf.cli_args import add_config_arguments

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["TrainingError", "build_parser", "main", "run"]

logger = logging.getLogger("rfcn_tf.train")

RUN_CONFIG_NAME = "config.yaml"


class TrainingError(RuntimeError):
    """A failure the CLI reports as one clear line (exit status 1) instead of a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfcn_tf.train",
        description="Train an R-FCN detector (Dai et al., NIPS 2016), then evaluate it and export "
                    "a SavedModel. With no arguments: the synthetic-shapes default on the CPU. "
                    "Rerun the same command to resume an interrupted run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m rfcn_tf.train\n"
               "  python -m rfcn_tf.train --config bccd --set data.voc_root=/data/BCCD\n"
               "  python -m rfcn_tf.train --config voc07_resnet101 --strategy mirrored\n"
               "  python -m rfcn_tf.train --set train.scheme=alternating "
               "--set train.stage_steps=[400,400,200,200]")
    add_config_arguments(parser, set_example="train.lr=0.01 or --set data.scales=[480]",
                         config_help="presets: shapes_tiny, bccd, voc07_resnet101, coco_resnet101 "
                                     "(default: shapes_tiny)")
    parser.add_argument("--work-dir", default=None,
                        help="run folder for config.yaml, checkpoints, TensorBoard events and "
                             "metrics (default: train.work_dir of the config)")
    parser.add_argument("--strategy", default=None, choices=("default", "mirrored", "multi_worker"),
                        help="distribution: default = one device; mirrored = all local GPUs; "
                             "multi_worker = the cluster in TF_CONFIG (default: train.strategy)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the evaluation after training (train.evaluate_at_end)")
    parser.add_argument("--no-export", action="store_true",
                        help="skip the SavedModel export after training (train.export_at_end)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (log lines every train.log_every steps remain)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    return parser


# ------------------------------------------------------------------------------------------------
# Pieces


def _setup_logging() -> None:
    root = logging.getLogger("rfcn_tf")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # one line per message even when a library configured the root


def check_work_dir(work_dir: str, cfg, *, class_names: Sequence[str]) -> None:
    """Refuses to resume a run whose saved model config or classes differ from this one's.

    Raises:
      TrainingError: naming the differing keys (the checkpoints would not fit).
    """
    import yaml

    path = os.path.join(work_dir, RUN_CONFIG_NAME)
    checkpoints = os.path.join(work_dir, "checkpoints")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(checkpoints, "checkpoint"))):
        return
    with open(path, encoding="utf-8") as f:
        saved = yaml.safe_load(f) or {}
    # Settings that do not change the variables (each section's RESUME_SAFE) may differ.
    from rfcn_tf.config import model_resume_diff

    diff = model_resume_diff(saved.get("model", {}), cfg)
    saved_names = _saved_class_names(work_dir)
    if saved_names is not None and saved_names != list(class_names):
        diff.append(f"classes: {saved_names} -> {list(class_names)}")
    if diff:
        raise TrainingError(
            f"{work_dir} holds checkpoints of a run with another model: " + "; ".join(diff[:8])
            + ". Resume with the same config, or pass a new --work-dir to start afresh")


def _write_run_config(work_dir: str, cfg, *, class_names: Sequence[str]) -> str:
    import yaml

    path = os.path.join(work_dir, RUN_CONFIG_NAME)
    # Only config sections (evaluate/predict load this file); the classes go in comments and in
    # classes.txt.
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    text += "# classes of the run (model ids):\n" + "".join(
        f"#   class {i + 1}: {name}\n" for i, name in enumerate(class_names))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(work_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{n}\n" for n in class_names))
    return path


def _saved_class_names(work_dir: str) -> Optional[list[str]]:
    path = os.path.join(work_dir, "classes.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _stage_boundaries(lr_steps: Sequence[int], steps: int) -> list[int]:
    """``train.lr_steps`` within one stage (stage-relative; later ones do not apply)."""
    inside = [int(b) for b in lr_steps if 0 < int(b) < steps]
    dropped = [int(b) for b in lr_steps if not 0 < int(b) < steps]
    if dropped:
        logger.warning("train.lr_steps %s lie outside a stage of %d steps and are ignored there",
                       dropped, steps)
    return inside


def _first_batch(dataset) -> dict:
    for batch in dataset.take(1):
        return {k: v.numpy() for k, v in batch.items()}
    raise TrainingError("the validation split yielded no image for the TensorBoard previews")


def _export_model(cfg, model, *, class_names, num_classes):
    """Exports with the pure-TF PS-RoI pooling (stock ops); returns the version folder."""
    from rfcn_tf import export as export_lib
    from rfcn_tf.data.pipeline import evaluation_scale
    from rfcn_tf.model.builder import build_detector

    if cfg.model.head.psroi_impl != "tf":
        tf_cfg = dataclasses.replace(
            cfg.model, head=dataclasses.replace(cfg.model.head, psroi_impl="tf"))
        export_model = build_detector(tf_cfg, num_classes=num_classes)
        export_model.set_weights(model.get_weights())
    else:
        export_model = model
    return export_lib.export_saved_model(
        export_model, class_names=class_names, out_dir=os.path.abspath(cfg.export.out_dir),
        model_name=cfg.export.model_name, version=cfg.export.version,
        min_size=int(evaluation_scale(cfg.data.scales)), max_size=int(cfg.data.max_size))


# ------------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains, evaluates and exports as ``args`` say; returns what happened (paths, metrics).

    Raises:
      ConfigError, TrainingError, CheckpointError, NonFiniteLossError, DataError: reported by
      ``main`` as one line.
    """
    started = time.perf_counter()
    from rfcn_tf.config import load_config

    overrides = list(args.overrides)
    if args.work_dir:
        overrides.append(f"train.work_dir={args.work_dir}")
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    cfg = load_config(args.config, overrides)
    from rfcn_tf.engine.features import TrainingFeatures, resolve_schedule

    cfg = resolve_schedule(cfg)  # train.epochs etc. -> steps (shown by --print-config)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return {}
    tcfg = cfg.train
    work_dir = tcfg.work_dir
    checkpoint_dir = os.path.join(work_dir, "checkpoints")
    tensorboard_dir = os.path.join(work_dir, "tensorboard", "train")

    import keras
    import tensorflow as tf

    from rfcn_tf.data.pipeline import build_dataset, build_source
    from rfcn_tf.engine import callbacks as cb
    from rfcn_tf.engine import checkpoints as ckpt_lib
    from rfcn_tf.engine.optimizer import build_lr_schedule, build_optimizer, configure_mixed_precision
    from rfcn_tf.engine.schemes import build_stages, run_training
    from rfcn_tf.engine.strategy import build_strategy, is_chief
    from rfcn_tf.model.builder import build_detector

    keras.utils.set_random_seed(tcfg.seed)
    strategy = build_strategy(tcfg.strategy)
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if tcfg.batch_size % replicas:
        raise TrainingError(f"train.batch_size={tcfg.batch_size} (the global batch) must be a "
                            f"multiple of the {replicas} replicas of the '{tcfg.strategy}' strategy")
    policy = configure_mixed_precision(tcfg.mixed_precision)

    _, info = build_source(cfg.data, split=cfg.data.train_split)
    class_names = list(info.class_names)
    num_classes = len(class_names)
    check_work_dir(work_dir, cfg, class_names=class_names)
    if chief:
        os.makedirs(work_dir, exist_ok=True)
        _write_run_config(work_dir, cfg, class_names=class_names)

    latest = tf.train.latest_checkpoint(checkpoint_dir) if os.path.isdir(checkpoint_dir) else None
    start_step = 0
    if latest:
        start_step = ckpt_lib.read_checkpoint_meta(latest).step or 0
    elif tcfg.init_checkpoint:  # fail before the slow part
        init_prefix = ckpt_lib.resolve_checkpoint(tcfg.init_checkpoint, what="train.init_checkpoint")
        ckpt_lib.check_num_classes(ckpt_lib.read_checkpoint_meta(init_prefix), num_classes,
                                   what="train.init_checkpoint")
    # The same seeds on resume: the stream continues where it stopped (train.data_resume).
    train_data_cfg = cfg.data

    with strategy.scope():
        model = build_detector(cfg.model, num_classes=num_classes)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # batch_size is the GLOBAL batch: the pipeline batches the per-replica share of it.
        return build_dataset(train_data_cfg, split=cfg.data.train_split, training=True,
                             batch_size=tcfg.batch_size, input_context=context)

    stages = build_stages(tcfg.scheme, steps=tcfg.steps, stage_steps=tcfg.stage_steps)
    loss_scaling = policy == "mixed_float16"

    def optimizer_fn(variables, steps):
        schedule = build_lr_schedule(
            base_lr=tcfg.lr, total_steps=steps, schedule=tcfg.schedule,
            boundaries=_stage_boundaries(tcfg.lr_steps, steps) if tcfg.schedule == "step" else (),
            decay=tcfg.lr_decay, warmup_steps=min(tcfg.warmup_steps, steps - 1),
            warmup_factor=tcfg.warmup_factor)
        return build_optimizer(variables=variables, learning_rate=schedule,
                               momentum=tcfg.momentum, weight_decay=tcfg.weight_decay,
                               clip_norm=tcfg.clip_norm, loss_scaling=loss_scaling)

    writer = tf.summary.create_file_writer(tensorboard_dir) if chief else \
        tf.summary.create_noop_writer()
    features = TrainingFeatures(cfg, model=model, strategy=strategy, class_names=class_names,
                                writer=writer if chief else None, work_dir=work_dir)
    preview = None
    if chief and tcfg.num_summary_images > 0:
        preview = _first_batch(build_dataset(cfg.data, split=cfg.data.val_split, training=False,
                                             batch_size=tcfg.num_summary_images))

    def hooks_fn(stage, total_steps):
        hooks = features.hooks() + [cb.SummaryHook(writer, every=tcfg.log_every)]
        if preview is not None:
            hooks.append(cb.ImageSummaryHook(
                writer, detect_fn=model.detect, images=preview["images"],
                image_shapes=preview["image_shapes"], class_names=class_names,
                every=tcfg.checkpoint_every))
        if chief:
            hooks.append(cb.ProgressHook(total_steps=total_steps,
                                         disable=True if args.no_progress else None))
            hooks.append(cb.LoggingHook(total_steps=total_steps, every=tcfg.log_every))
        return hooks

    def proposal_model_fn():
        return build_detector(cfg.model, num_classes=num_classes)

    logger.info("training %s on %s (%d classes: %s), %d steps of %d images (%s scheme), "
                "strategy %s with %d replica(s), policy %s; work dir %s",
                cfg.model.backbone.name, cfg.data.source, num_classes, ", ".join(class_names[:6]),
                sum(s.steps for s in stages), tcfg.batch_size, tcfg.scheme, tcfg.strategy,
                replicas, policy, work_dir)
    train_started = time.perf_counter()
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("rfcn_tf")]):
        result = run_training(
            model=model, strategy=strategy, dataset_fn=dataset_fn, stages=stages,
            optimizer_fn=optimizer_fn, checkpoint_dir=checkpoint_dir, num_classes=num_classes,
            global_batch_size=tcfg.batch_size, checkpoint_every=tcfg.checkpoint_every,
            keep_checkpoints=tcfg.keep_checkpoints, hooks_fn=hooks_fn,
            init_checkpoint=tcfg.init_checkpoint, proposal_model_fn=proposal_model_fn,
            **features.run_training_kwargs())
    train_seconds = time.perf_counter() - train_started
    writer.flush()

    report: dict[str, Any] = {
        "work_dir": work_dir, "checkpoint": result.checkpoint, "tensorboard": tensorboard_dir,
        "step": result.step, "train_seconds": train_seconds, "resumed_from": result.resumed_from,
        "last_logs": result.last_logs, "metrics": None, "metrics_dir": None, "export": None,
    }
    if not chief:
        return report
    # The weights the run delivers: the best validation checkpoint, else EMA, else the last.
    final = features.finalize()
    report.update(final_weights=final["weights"], best=final["best"],
                  best_line=features.summary_line(final), stop_reason=result.stop_reason)
    delivered = final["best"]["checkpoint"] if final["best"] else result.checkpoint

    if tcfg.evaluate_at_end and not args.no_eval:
        from rfcn_tf.evaluation.evaluator import evaluate_detector, format_summary

        split = cfg.eval.split or cfg.data.val_split
        _, eval_info = build_source(cfg.data, split=split)
        eval_dir = os.path.join(work_dir, "eval", split)
        dataset = build_dataset(cfg.data, split=split, training=False,
                                batch_size=cfg.eval.batch_size)
        if cfg.eval.score_threshold is not None:
            model.score_threshold = float(cfg.eval.score_threshold)
        metrics = evaluate_detector(
            model.detect, dataset, class_names=class_names, category_ids=eval_info.category_ids,
            out_dir=eval_dir, max_images=cfg.eval.max_images, progress=not args.no_progress,
            score_threshold=cfg.eval.score_threshold, num_images=eval_info.num_examples,
            info={"checkpoint": delivered, "weights": final["weights"], "split": split,
                  "work_dir": work_dir})
        report.update(metrics=metrics, metrics_dir=eval_dir)
        logger.info("evaluation on %s: %s", split, format_summary(metrics))

    if tcfg.export_at_end and not args.no_export:
        report["export"] = str(_export_model(cfg, model, class_names=class_names,
                                             num_classes=num_classes))
    else:
        report["export_skipped"] = "--no-export" if args.no_export else "train.export_at_end=false"
    report["total_seconds"] = time.perf_counter() - started
    return report


def _print_report(report: dict[str, Any]) -> None:
    from rfcn_tf.engine.callbacks import format_duration

    lines = [f"work dir:     {report['work_dir']}",
             f"checkpoints:  {os.path.join(report['work_dir'], 'checkpoints')}"
             f" (latest {report['checkpoint']})",
             f"tensorboard:  tensorboard --logdir {os.path.dirname(report['tensorboard'])}"]
    metrics = report.get("metrics")
    if metrics:
        lines.append(f"metrics:      {os.path.join(report['metrics_dir'], 'metrics.json')}")
    else:
        lines.append("metrics:      (evaluation skipped)")
    if report.get("export"):
        lines.append(f"export:       {report['export']}")
    else:
        lines.append(f"export:       skipped ({report.get('export_skipped', 'not run')})")
    print("\n".join(lines), flush=True)
    if report.get("best_line"):
        print(report["best_line"], flush=True)
    summary = f"trained to step {report['step']} in {format_duration(report['train_seconds'])}"
    if report.get("stop_reason"):
        summary += " (stopped early)"
    if report.get("resumed_from"):
        summary += f" (resumed from {os.path.basename(report['resumed_from'])})"
    if metrics:
        summary += (f"; mAP@0.5 {metrics['voc2010']['mAP']:.4f} (VOC all-point), "
                    f"COCO AP50 {metrics['coco']['AP50']:.4f}, AP {metrics['coco']['AP']:.4f} "
                    f"on {metrics['num_images']} images")
    summary += f"; total {format_duration(report['total_seconds'])}"
    print(summary, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure with one message, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    from rfcn_tf.config import ConfigError
    from rfcn_tf.data.errors import DataError
    from rfcn_tf.engine.checkpoints import CheckpointError
    from rfcn_tf.engine.loop import NonFiniteLossError

    try:
        report = run(args)
    except (ConfigError, TrainingError, CheckpointError, NonFiniteLossError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr, flush=True)
        return 130
    if report:
        _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
