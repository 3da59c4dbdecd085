"""Training schemes: approximate joint training and the paper's 4-step alternating training.

- ``joint`` (default): one stage, RPN and R-FCN losses summed, every variable trained;
  proposals are constants of the step (``tf.stop_gradient``: "approximate joint training",
  Faster R-CNN sec. 3.2).
- ``alternating``: R-FCN sec. 3 ("we adopt the 4-step alternating training [18], alternating
  between training RPN and training R-FCN"), i.e. Faster R-CNN sec. 3.2:

  1. ``rpn``: train the backbone and the RPN head on the RPN loss, from the initial weights
     (ImageNet or ``model.backbone.weights`` / ``train.init_checkpoint``; snapshot
     ``checkpoints/initial_backbone``);
  2. ``rfcn``: train a detection network, the backbone and the R-FCN head, on the R-FCN loss,
     with the proposals of the step-1 RPN held FIXED: a frozen copy of the model as it was at
     the end of step 1 (snapshot ``checkpoints/stage_2_proposals``) computes them. "This
     detection network is also initialized by the ImageNet-pre-trained model": the backbone
     starts again from the initial weights (``Stage.reset_backbone``), not from step 1's;
  3. ``rpn_finetune``: the shared conv layers (backbone) frozen at step 2's weights, fine-tune
     the layers unique to the RPN (its head, continuing from step 1) on the RPN loss;
  4. ``rfcn_finetune``: backbone (and RPN) frozen, fine-tune the R-FCN head (R-FCN loss).

What the steps share: steps 1 and 2 share nothing but the initial weights (step 2 sees step 1
only through its fixed proposals); from step 3 on the RPN and the detector share step 2's
backbone ("now the two networks share conv layers"), which no later step changes; the RPN head
is step 1's until step 3 fine-tunes it, the R-FCN head step 2's until step 4 does.

Freezing is the choice of the variables the stage's optimizer updates, plus Keras'
``trainable = False`` on the frozen parts so their BatchNorm layers run in inference mode (their
moving statistics do not drift); per-layer flags are restored exactly after the stage.

Each stage has its own optimizer and learning-rate schedule over its steps; the global step
counts all stages, and every checkpoint records the stage index, so an interrupted run resumes
inside the right stage (with that stage's optimizer slots).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence

import keras
import tensorflow as tf

from rfcn_tf.data.errors import data_error_from
from rfcn_tf.engine import checkpoints as ckpt_lib
from rfcn_tf.engine.callbacks import CheckpointHook
from rfcn_tf.engine.data_resume import (
    checkpoint_has_iterator,
    iterator_checkpointable,
    skipping_dataset_fn,
)
from rfcn_tf.engine.ema import EmaHook
from rfcn_tf.engine.loop import Hook, TrainLoop
from rfcn_tf.engine.optimizer import inner_optimizer
from rfcn_tf.engine.strategy import is_chief, write_dir
from rfcn_tf.engine.train_step import build_train_step

__all__ = [
    "GROUPS",
    "SCHEMES",
    "Stage",
    "TrainResult",
    "build_stages",
    "frozen",
    "model_groups",
    "run_training",
    "stage_variables",
]

logger = logging.getLogger("rfcn_tf.train")

SCHEMES = ("joint", "alternating")
GROUPS = ("backbone", "rpn", "rfcn")

# Attribute names under which a model exposes its three parts (first found wins).
_GROUP_ATTRIBUTES = {
    "backbone": ("backbone",),
    "rpn": ("rpn_head", "rpn"),
    "rfcn": ("rfcn_head", "head"),
}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a scheme.

    Attributes:
      name: label in logs and TensorBoard.
      steps: optimizer steps of this stage.
      include: loss groups given to ``compute_losses`` (``("rpn", "rfcn")``, ``("rpn",)``, ...).
      train_groups: the parts whose variables the stage updates (subset of ``GROUPS``).
      fixed_proposals: proposals come from a frozen copy of the model as it was when the
        stage began (alternating step 2).
      reset_backbone: the stage starts its backbone from the weights it had when training
        began (before stage 1), not from the previous stage's (alternating step 2).
    """

    name: str
    steps: int
    include: tuple[str, ...]
    train_groups: tuple[str, ...] = GROUPS
    fixed_proposals: bool = False
    reset_backbone: bool = False


def build_stages(scheme: str, *, steps: int, stage_steps: Sequence[int] = ()) -> list[Stage]:
    """The stages of ``scheme``.

    Args:
      scheme: ``joint`` | ``alternating``.
      steps: joint: all steps; alternating without ``stage_steps``: steps of EACH stage.
      stage_steps: alternating: the 4 stage lengths (overrides ``steps``).

    Raises:
      ValueError: unknown scheme, non-positive step counts, ``stage_steps`` not of length 4.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown training scheme '{scheme}'; choose one of {', '.join(SCHEMES)}")
    if scheme == "joint":
        if steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {steps}")
        return [Stage("joint", int(steps), ("rpn", "rfcn"), GROUPS)]
    lengths = list(stage_steps) if stage_steps else [steps] * 4
    if len(lengths) != 4 or min(lengths) < 1:
        raise ValueError(f"the alternating scheme needs 4 positive stage lengths, got {lengths}")
    return [
        Stage("rpn", int(lengths[0]), ("rpn",), ("backbone", "rpn")),
        Stage(
            "rfcn",
            int(lengths[1]),
            ("rfcn",),
            ("backbone", "rfcn"),
            fixed_proposals=True,
            reset_backbone=True,
        ),
        Stage("rpn_finetune", int(lengths[2]), ("rpn",), ("rpn",)),
        Stage("rfcn_finetune", int(lengths[3]), ("rfcn",), ("rfcn",)),
    ]


def model_groups(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """The model's three parts as layers: ``{"backbone": ..., "rpn": ..., "rfcn": ...}``.

    Raises:
      ValueError: the model lacks one of them (naming the attributes looked for).
    """
    groups = {}
    for group, names in _GROUP_ATTRIBUTES.items():
        for name in names:
            layer = getattr(model, name, None)
            if isinstance(layer, keras.layers.Layer):
                groups[group] = layer
                break
        else:
            raise ValueError(
                f"{type(model).__name__} has no '{group}' part (looked for attribute "
                f"{' or '.join(names)}); the alternating scheme needs all of "
                f"{', '.join(GROUPS)}"
            )
    return groups


def stage_variables(model: keras.Model, stage: Stage) -> list[keras.Variable]:
    """The trainable variables ``stage`` updates.

    Joint training (all groups) takes ``model.trainable_variables``. Otherwise the union of the
    groups' trainable variables; a trainable model variable in no group is an error (it would
    silently never train).
    """
    if set(stage.train_groups) == set(GROUPS):
        return list(model.trainable_variables)
    groups = model_groups(model)
    grouped = {}
    for name, layer in groups.items():
        for variable in layer.trainable_variables:
            grouped[id(variable)] = name
    orphans = [v.path for v in model.trainable_variables if id(v) not in grouped]
    if orphans:
        raise ValueError(f"trainable variables outside the backbone/rpn/rfcn parts: {orphans[:5]}")
    return [v for v in model.trainable_variables if grouped[id(v)] in stage.train_groups]


def _layer_tree(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """``layer`` and all its sublayers, parents before children."""
    out, stack, seen = [], [layer], set()
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        out.append(current)
        stack.extend(getattr(current, "_layers", []) or [])
    return out


@contextlib.contextmanager
def frozen(layers: Sequence[keras.layers.Layer]) -> Iterator[None]:
    """Sets ``trainable = False`` on ``layers`` (BatchNorm -> inference mode) for the block.

    Every sublayer's own flag is restored afterwards (Keras' setter is recursive, so restoring
    only the top flag would unfreeze layers a backbone froze on purpose).
    """
    saved = []
    for layer in layers:
        saved.extend((sub, sub.trainable) for sub in _layer_tree(layer))
    try:
        for layer in layers:
            layer.trainable = False
        yield
    finally:
        for sub, flag in saved:  # parents first, so each child ends with its own flag
            sub.trainable = flag


@dataclasses.dataclass
class TrainResult:
    """What ``run_training`` did.

    Attributes:
      step: completed global steps at the end.
      total_steps: the scheme's total.
      last_logs: logs of the last step run here (empty when nothing was left to train).
      checkpoint: the latest checkpoint prefix (None if none was written).
      resumed_from: the checkpoint training resumed from (None for a fresh start).
      stages_run: names of the stages that ran (completely or partly) in this call.
      stop_reason: why training ended before ``total_steps`` (early stop), else None.
      data_resume: how the input stream was resumed: ``iterator``, ``skip``, ``none`` (a fresh
        stream) or None (nothing to resume).
    """

    step: int
    total_steps: int
    last_logs: dict
    checkpoint: str | None
    resumed_from: str | None
    stages_run: list
    stop_reason: str | None = None
    data_resume: str | None = None


def _propose(proposal_model: keras.Model, features: dict) -> dict:
    """``{"proposals": [B, P, 4], "num_proposals": [B]}`` of the frozen proposal model.

    ``RFCN.propose`` with the training-time proposal counts; ``training=False`` keeps the frozen
    copy's BatchNorm in inference mode (moving statistics), as a frozen network should be.
    """
    result = proposal_model.propose(features, training=False, proposal_counts="train")
    return {"proposals": result["proposals"], "num_proposals": result["num_proposals"]}


def _proposal_features_fn(proposal_model: keras.Model) -> Callable[[dict], dict]:
    """features -> features + fixed proposals from ``proposal_model`` (alternating step 2)."""

    def prepare(features: dict) -> dict:
        # Constants of the step: the frozen RPN's proposals receive no gradient.
        fixed = {k: tf.stop_gradient(v) for k, v in _propose(proposal_model, features).items()}
        return dict(features, **fixed)

    return prepare


def run_training(
    *,
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    stages: Sequence[Stage],
    optimizer_fn: Callable[[Sequence[keras.Variable], int], keras.optimizers.Optimizer],
    checkpoint_dir: str,
    num_classes: int,
    global_batch_size: int,
    checkpoint_every: int,
    keep_checkpoints: int = 3,
    hooks_fn: Callable[[Stage, int], Sequence[Hook]] | None = None,
    init_checkpoint: str | None = None,
    proposal_model_fn: Callable[[], keras.Model] | None = None,
    ema=None,
    data_resume: str = "iterator",
) -> TrainResult:
    """Runs (or resumes) the scheme's stages, checkpointing as it goes.

    Args:
      model: the built model, created inside ``strategy.scope()``.
      strategy: the distribution strategy.
      dataset_fn: ``input_context -> tf.data.Dataset`` of PER-REPLICA batches (endless), for
        ``strategy.distribute_datasets_from_function``.
      stages: ``build_stages(...)``.
      optimizer_fn: ``(variables, stage_steps) -> optimizer`` built over ``variables``; called
        inside ``strategy.scope()`` once per stage (a fresh optimizer and schedule per stage).
      checkpoint_dir: where ``ckpt-<step>`` files go; its latest checkpoint is resumed from.
      num_classes: C, stored in checkpoints and checked when resuming.
      global_batch_size: images per step over all replicas.
      checkpoint_every: steps between checkpoints (0 = only at stage ends).
      keep_checkpoints: how many recent checkpoints to keep.
      hooks_fn: ``(stage, end_step) -> hooks`` for each stage (summaries, progress, logs); the
        checkpoint hook is added here, first.
      init_checkpoint: initial weights when NOT resuming (``restore_model_weights``).
      proposal_model_fn: builds a second model like ``model`` (inside the scope) for the
        frozen proposal copy of alternating step 2; required by such a stage. The model must
        have ``propose(features, training=...) -> {"proposals", "num_proposals"}`` (or be an
        ``RFCN``) and ``compute_losses`` must use ``features["proposals"]`` when present.
      ema: a ``WeightEMA`` of ``model`` (``ema.py``): updated after every step, saved in the
        training checkpoint as ``ema``, reset to the weights when training starts fresh.
      data_resume: ``iterator`` (the input iterator is checkpointed and restored), ``skip``
        (a resumed stream drops the batches already trained on) or ``none``
        (``data_resume.py``; ``choose_data_resume`` turns ``auto`` into one of these).
        ``iterator`` becomes ``skip`` where the strategy's iterator cannot be saved.

    Returns:
      :class:`TrainResult`.

    Raises:
      CheckpointError: an unusable checkpoint to resume from or to initialize with.
      NonFiniteLossError: a loss became NaN/Inf (no checkpoint is written from that step).
    """
    if data_resume not in ("iterator", "skip", "none"):
        raise ValueError(f"data_resume must be iterator, skip or none, got {data_resume!r}")
    stages = list(stages)
    ends = []
    for stage in stages:
        ends.append((ends[-1] if ends else 0) + stage.steps)
    starts = [0] + ends[:-1]
    total_steps = ends[-1]
    chief = is_chief(strategy)

    with strategy.scope():
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        step_var = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="global_step", aggregation=aggregation
        )
        stage_var = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="stage", aggregation=aggregation
        )
        classes_var = tf.Variable(
            num_classes,
            dtype=tf.int64,
            trainable=False,
            name="num_classes",
            aggregation=aggregation,
        )

    # The newest checkpoint that reads back (a truncated one is passed over with a warning).
    latest = ckpt_lib.find_resume_checkpoint(checkpoint_dir, clean=chief)
    meta = None
    start_step = 0
    if latest:
        meta = ckpt_lib.read_checkpoint_meta(latest)
        ckpt_lib.check_num_classes(meta, num_classes, what="the checkpoint to resume from")
        if meta.step is None:
            raise ckpt_lib.CheckpointError(
                f"{latest} is not a training checkpoint (no step counter)"
            )
        if meta.stage is not None and meta.stage >= len(stages):
            raise ckpt_lib.CheckpointError(
                f"{latest} was taken in stage {meta.stage + 1} but this scheme has "
                f"{len(stages)} stage(s) ({', '.join(s.name for s in stages)}): the run was "
                f"started with another train.scheme; use a new --work-dir"
            )
        start_step = meta.step
        logger.info(
            "resuming from %s (step %d, stage %s)", latest, start_step, (meta.stage or 0) + 1
        )
    elif init_checkpoint:
        init_meta = ckpt_lib.restore_model_weights(model, init_checkpoint, num_classes=num_classes)
        logger.info("initialized the model from %s", init_meta.path)

    if start_step >= total_steps:
        logger.info("already trained: %s is at step %d of %d", latest, start_step, total_steps)
        ckpt_lib.restore_model_weights(
            model, latest, num_classes=num_classes, what="the checkpoint to resume from"
        )
        if ema is not None:
            tf.train.Checkpoint(ema=ema.checkpointable()).restore(latest).expect_partial()
        step_var.assign(start_step)
        return TrainResult(
            step=start_step,
            total_steps=total_steps,
            last_logs={},
            checkpoint=latest,
            resumed_from=latest,
            stages_run=[],
        )

    if data_resume == "iterator" and not iterator_checkpointable(strategy):
        data_resume = "skip"  # only the default strategy's iterator can be saved
    resume_by = None
    save_iterator = data_resume == "iterator"
    if latest:
        resume_by = data_resume
        if resume_by == "iterator" and not checkpoint_has_iterator(latest):
            resume_by = "skip"  # written without the iterator (another mode or an older run)
        if resume_by != "iterator":
            logger.info(
                "input stream resumed by %s",
                f"skipping the {start_step} steps already trained"
                if resume_by == "skip"
                else "starting afresh (none)",
            )
    if resume_by == "skip":
        dataset_fn = skipping_dataset_fn(dataset_fn, start_step)
    if start_step == 0 and any(stage.reset_backbone for stage in stages):
        # The initial backbone (after init_checkpoint), for the stages that start from it.
        _backbone_checkpoint(model).write(
            ckpt_lib.snapshot_prefix(write_dir(checkpoint_dir, strategy), INITIAL_BACKBONE)
        )

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    extras = {}
    if save_iterator:
        extras["iterator"] = iterator
    if ema is not None:
        extras["ema"] = ema.checkpointable()
        if latest is None:
            ema.reset()  # shadows start at the weights training starts from (init_checkpoint)
    restore_extras = {k: v for k, v in extras.items() if k != "iterator" or resume_by == "iterator"}
    last_logs: dict = {}
    stop_reason = None
    stages_run = []
    restored = latest is None
    last_checkpoint = latest
    for index, stage in enumerate(stages):
        if start_step >= ends[index]:
            continue
        variables = stage_variables(model, stage)
        with strategy.scope():
            optimizer = optimizer_fn(variables, stage.steps)
        checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            step=step_var,
            stage=stage_var,
            num_classes=classes_var,
            **extras,
        )
        if not restored:
            mid_stage = (meta.stage or 0) == index and start_step > starts[index]
            try:
                if mid_stage:  # this stage's optimizer state is in the checkpoint
                    tf.train.Checkpoint(
                        model=model,
                        optimizer=optimizer,
                        step=step_var,
                        stage=stage_var,
                        num_classes=classes_var,
                        **restore_extras,
                    ).restore(latest).expect_partial().assert_existing_objects_matched()
                else:  # the checkpoint ended the previous stage: fresh optimizer
                    status = (
                        tf.train.Checkpoint(model=model, step=step_var, **restore_extras)
                        .restore(latest)
                        .expect_partial()
                    )
                    if restore_extras:
                        status.assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as exc:
                ckpt_lib.silence_restore_warnings()  # the error stays the last thing on screen
                raise ckpt_lib.CheckpointError(
                    f"cannot resume from {latest}: it does not fit this model and optimizer "
                    f"(another model config or scheme?): {str(exc)[:1500]}"
                ) from exc
            restored = True
        stage_var.assign(index)

        at_stage_start = int(step_var.numpy()) == starts[index]
        prepare_features = None
        if stage.fixed_proposals:
            prepare_features = _fixed_proposals(
                model,
                strategy,
                checkpoint_dir,
                index,
                at_stage_start=at_stage_start,
                proposal_model_fn=proposal_model_fn,
            )
        if stage.reset_backbone and at_stage_start:
            _reset_backbone(model, strategy, checkpoint_dir, fresh=latest is None)

        manager_dir = write_dir(checkpoint_dir, strategy)
        manager = tf.train.CheckpointManager(
            checkpoint, manager_dir, max_to_keep=keep_checkpoints, checkpoint_name="ckpt"
        )
        checkpoint_hook = CheckpointHook(
            manager, every=checkpoint_every, save_at_end=True, discard=not chief
        )
        hooks = ([EmaHook(ema)] if ema is not None else []) + [checkpoint_hook]
        hooks += list(hooks_fn(stage, total_steps) if hooks_fn else [])
        groups = model_groups(model) if set(stage.train_groups) != set(GROUPS) else {}
        frozen_layers = [layer for name, layer in groups.items() if name not in stage.train_groups]
        schedule_owner = inner_optimizer(optimizer)
        with frozen(frozen_layers):
            step_fn = build_train_step(
                model,
                optimizer,
                strategy,
                variables=variables,
                include=stage.include,
                prepare_features=prepare_features,
            )
            loop = TrainLoop(
                step_fn=step_fn,
                iterator=iterator,
                step_counter=step_var,
                end_step=ends[index],
                global_batch_size=global_batch_size,
                learning_rate_fn=lambda owner=schedule_owner: float(owner.learning_rate),
                hooks=hooks,
                name=stage.name,
                checkpoint_dir=checkpoint_dir,
            )
            logger.info(
                "stage %d/%d '%s': steps %d..%d, losses %s, training %s",
                index + 1,
                len(stages),
                stage.name,
                int(step_var.numpy()) + 1,
                ends[index],
                "+".join(stage.include),
                "+".join(stage.train_groups),
            )
            try:
                last_logs = loop.run()
            except tf.errors.InvalidArgumentError as exc:
                data_error = data_error_from(exc)  # an unreadable image: one line naming it
                if data_error is None:
                    raise
                raise data_error from exc
        stages_run.append(stage.name)
        if chief and checkpoint_hook.last_path:
            last_checkpoint = checkpoint_hook.last_path
        if loop.stop_reason is not None:
            stop_reason = loop.stop_reason
            logger.info(
                "training stopped at step %d of %d: %s",
                int(step_var.numpy()),
                total_steps,
                stop_reason,
            )
            break
    return TrainResult(
        step=int(step_var.numpy()),
        total_steps=total_steps,
        last_logs=last_logs,
        checkpoint=last_checkpoint if chief else None,
        resumed_from=latest,
        stages_run=stages_run,
        stop_reason=stop_reason,
        data_resume=resume_by,
    )


INITIAL_BACKBONE = "initial_backbone"


def _backbone_checkpoint(model: keras.Model) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(backbone=model_groups(model)["backbone"])


def _reset_backbone(model, strategy, checkpoint_dir, *, fresh):
    """Restores the backbone written when training began (alternating step 2's start).

    ``fresh``: this process wrote the snapshot (read back its own copy); otherwise a resumed
    run reads the chief's.
    """
    folder = write_dir(checkpoint_dir, strategy) if fresh else checkpoint_dir
    prefix = ckpt_lib.snapshot_prefix(folder, INITIAL_BACKBONE)
    if not ckpt_lib.checkpoint_exists(prefix):
        raise ckpt_lib.CheckpointError(
            f"the alternating scheme's step 2 starts from the initial backbone {prefix}, which "
            f"is missing (written when training began); use a new --work-dir"
        )
    _backbone_checkpoint(model).read(prefix).assert_existing_objects_matched()
    logger.info("stage 2 starts its backbone from the initial weights (%s)", prefix)


def _fixed_proposals(model, strategy, checkpoint_dir, index, *, at_stage_start, proposal_model_fn):
    """Builds the frozen proposal copy for stage ``index`` (snapshot written at its start)."""
    if proposal_model_fn is None:
        raise ValueError("a stage with fixed proposals needs proposal_model_fn (a second model)")
    if not hasattr(model, "propose"):
        raise ValueError(
            f"{type(model).__name__} has no propose(features, training=...): it "
            f"cannot provide fixed proposals for alternating training"
        )
    prefix = ckpt_lib.snapshot_prefix(checkpoint_dir, f"stage_{index + 1}_proposals")
    writer_prefix = ckpt_lib.snapshot_prefix(
        write_dir(checkpoint_dir, strategy), f"stage_{index + 1}_proposals"
    )
    if at_stage_start:
        # The model as it ended the previous stage: its RPN provides this stage's proposals.
        tf.train.Checkpoint(model=model).write(writer_prefix)
    elif not ckpt_lib.checkpoint_exists(prefix):
        raise ckpt_lib.CheckpointError(
            f"resuming inside stage {index + 1} needs the frozen proposal model {prefix}, "
            f"which is missing; restart the stage from its first checkpoint or use a new --work-dir"
        )
    with strategy.scope():
        proposal_model = proposal_model_fn()
    read_prefix = writer_prefix if at_stage_start else prefix
    status = tf.train.Checkpoint(model=proposal_model).read(read_prefix)
    status.assert_existing_objects_matched()
    proposal_model.trainable = False
    return _proposal_features_fn(proposal_model)
