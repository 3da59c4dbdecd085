"""Tests for rfcn_tf.engine.schemes: joint and 4-step alternating training, freezing, resuming."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.engine_standin import TinyDetector, dataset_fn

from rfcn_tf.engine import checkpoints as ckpt_lib
from rfcn_tf.engine.loop import Hook
from rfcn_tf.engine.optimizer import build_lr_schedule, build_optimizer
from rfcn_tf.engine.schemes import (
    Stage,
    build_stages,
    frozen,
    model_groups,
    run_training,
    stage_variables,
)

STRATEGY = tf.distribute.get_strategy()


def optimizer_fn(variables, steps):
    schedule = build_lr_schedule(
        base_lr=0.05, total_steps=steps, schedule="cosine", warmup_steps=2, warmup_factor=0.2
    )
    return build_optimizer(
        variables=variables, learning_rate=schedule, weight_decay=1e-4, clip_norm=10.0
    )


class Record(Hook):
    """Losses per stage, and a copy of every weight at each stage's start and end."""

    def __init__(self, model):
        self.model = model
        self.losses = {}
        self.weights_at_begin = {}
        self.weights_at_end = {}

    def on_train_begin(self, loop):
        self.weights_at_begin[loop.name] = {v.path: v.numpy().copy() for v in self.model.weights}

    def after_step(self, loop, step, logs):
        self.losses.setdefault(loop.name, []).append(logs["total_loss"])

    def on_train_end(self, loop, logs):
        self.weights_at_end[loop.name] = {v.path: v.numpy().copy() for v in self.model.weights}


class StopAt(Hook):
    def __init__(self, step):
        self.step = step

    def after_step(self, loop, step, logs):
        if step == self.step:
            raise KeyboardInterrupt(f"simulated interruption after step {step}")


def _run(model, directory, stages, hooks=(), **kwargs):
    args = dict(
        model=model,
        strategy=STRATEGY,
        dataset_fn=dataset_fn(2, **kwargs.pop("data", {})),
        stages=stages,
        optimizer_fn=optimizer_fn,
        checkpoint_dir=str(directory),
        num_classes=2,
        global_batch_size=2,
        checkpoint_every=2,
        hooks_fn=lambda stage, total: list(hooks),
        proposal_model_fn=lambda: TinyDetector(),
    )
    args.update(kwargs)
    return run_training(**args)


def test_build_stages():
    (joint,) = build_stages("joint", steps=100)
    assert joint == Stage("joint", 100, ("rpn", "rfcn"), ("backbone", "rpn", "rfcn"))
    stages = build_stages("alternating", steps=10, stage_steps=[1, 2, 3, 4])
    assert [s.name for s in stages] == ["rpn", "rfcn", "rpn_finetune", "rfcn_finetune"]
    assert [s.steps for s in stages] == [1, 2, 3, 4]
    assert [s.include for s in stages] == [("rpn",), ("rfcn",), ("rpn",), ("rfcn",)]
    assert [s.train_groups for s in stages] == [
        ("backbone", "rpn"),
        ("backbone", "rfcn"),
        ("rpn",),
        ("rfcn",),
    ]
    assert [s.fixed_proposals for s in stages] == [False, True, False, False]
    assert [s.reset_backbone for s in stages] == [False, True, False, False]
    assert [s.steps for s in build_stages("alternating", steps=7)] == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="unknown training scheme 'fancy'"):
        build_stages("fancy", steps=1)
    with pytest.raises(ValueError, match="4 positive stage lengths, got \\[1, 2\\]"):
        build_stages("alternating", steps=1, stage_steps=[1, 2])
    with pytest.raises(ValueError, match="train.steps must be >= 1, got 0"):
        build_stages("joint", steps=0)


def test_joint_training_loss_falls(tmp_path):
    model = TinyDetector()
    record = Record(model)
    result = _run(model, tmp_path, build_stages("joint", steps=40), [record])
    losses = record.losses["joint"]
    assert len(losses) == 40 and result.step == 40 and result.stages_run == ["joint"]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert result.checkpoint.endswith("ckpt-40")
    meta = ckpt_lib.read_checkpoint_meta(result.checkpoint)
    assert (meta.step, meta.stage, meta.num_classes) == (40, 0, 2)


def test_alternating_four_steps_freeze_the_right_parts_and_losses_fall(tmp_path):
    model = TinyDetector(batch_norm=True)
    record = Record(model)
    stages = build_stages("alternating", steps=0, stage_steps=[25, 25, 15, 15])
    result = _run(model, tmp_path, stages, [record])
    assert result.stages_run == ["rpn", "rfcn", "rpn_finetune", "rfcn_finetune"]
    assert result.step == 80
    for name in ("rpn", "rfcn"):
        losses = record.losses[name]
        assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), (name, losses)
    for name in ("rpn_finetune", "rfcn_finetune"):
        losses = record.losses[name]
        assert np.mean(losses[-5:]) < np.mean(losses[:5]), (name, losses)
    ends = record.weights_at_end

    def part(weights, prefix):
        return {k: v for k, v in weights.items() if k.startswith(prefix)}

    def same(a, b):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # The snapshot taken when step 2 began is the step-1 model and provides fixed proposals.
    snapshot = TinyDetector(batch_norm=True)
    tf.train.Checkpoint(model=snapshot).read(
        ckpt_lib.snapshot_prefix(str(tmp_path), "stage_2_proposals")
    ).assert_existing_objects_matched()
    assert same({v.path: v.numpy() for v in snapshot.weights}, ends["rpn"])
    # Step 2 starts its backbone (weights and BatchNorm statistics) from the initial weights
    # (Faster R-CNN sec. 3.2), not from step 1's; the RPN head stays step 1's.
    begins = record.weights_at_begin
    assert not same(part(begins["rpn"], "backbone"), part(ends["rpn"], "backbone"))
    assert same(part(begins["rfcn"], "backbone"), part(begins["rpn"], "backbone"))
    assert same(part(begins["rfcn"], "rpn"), part(ends["rpn"], "rpn"))
    # Step 2 trains the backbone and the R-FCN head, never the RPN head.
    assert same(part(ends["rpn"], "rpn"), part(ends["rfcn"], "rpn"))
    assert not same(part(ends["rpn"], "backbone"), part(ends["rfcn"], "backbone"))
    # Step 3: backbone (weights AND BatchNorm statistics) and R-FCN head frozen.
    assert same(part(ends["rfcn"], "backbone"), part(ends["rpn_finetune"], "backbone"))
    assert same(part(ends["rfcn"], "rfcn"), part(ends["rpn_finetune"], "rfcn"))
    assert not same(part(ends["rfcn"], "rpn"), part(ends["rpn_finetune"], "rpn"))
    # Step 4: only the R-FCN head moves.
    assert same(part(ends["rpn_finetune"], "backbone"), part(ends["rfcn_finetune"], "backbone"))
    assert same(part(ends["rpn_finetune"], "rpn"), part(ends["rfcn_finetune"], "rpn"))
    assert not same(part(ends["rpn_finetune"], "rfcn"), part(ends["rfcn_finetune"], "rfcn"))
    # Layer flags are back to trainable after the scheme.
    assert all(layer.trainable for layer in model_groups(model).values())
    meta = ckpt_lib.read_checkpoint_meta(result.checkpoint)
    assert (meta.step, meta.stage) == (80, 3)


def test_resume_mid_stage_continues_exactly(tmp_path):
    """Interrupted after step 7 (inside stage 2), a rerun restores weights, optimizer slots and
    schedule position: the final weights equal an uninterrupted run's (the data repeat every
    step, so the data position does not matter)."""
    stages = build_stages("alternating", steps=0, stage_steps=[4, 6, 2, 2])
    data = {"count": 2}
    reference = TinyDetector()
    _run(reference, tmp_path / "straight", stages, data=data)

    first = TinyDetector()
    with pytest.raises(KeyboardInterrupt):
        _run(first, tmp_path / "resumed", stages, [StopAt(7)], data=data)
    assert tf.train.latest_checkpoint(str(tmp_path / "resumed")).endswith("ckpt-6")
    meta = ckpt_lib.read_checkpoint_meta(str(tmp_path / "resumed" / "ckpt-6"))
    assert (meta.step, meta.stage) == (6, 1)

    second = TinyDetector()
    record = Record(second)
    result = _run(second, tmp_path / "resumed", stages, [record], data=data)
    assert result.resumed_from.endswith("ckpt-6")
    assert result.stages_run == ["rfcn", "rpn_finetune", "rfcn_finetune"]
    assert len(record.losses["rfcn"]) == 4  # steps 7..10 of stage 2
    for a, b in zip(reference.weights, second.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)

    # A third run has nothing left to do, but still loads the trained weights.
    third = TinyDetector(seed=123)
    again = _run(third, tmp_path / "resumed", stages)
    assert again.stages_run == [] and again.step == 14
    for a, b in zip(second.weights, third.weights):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)


def test_resume_at_the_start_of_step_2_resets_the_backbone_like_a_straight_run(tmp_path):
    """Interrupted right after step 1 (checkpoint at its end), a rerun starts step 2 from the
    initial backbone snapshot written when training began: the same weights as a straight run."""
    stages = build_stages("alternating", steps=0, stage_steps=[4, 2, 2, 2])
    data = {"count": 2}
    reference = TinyDetector()
    _run(reference, tmp_path / "straight", stages, data=data)
    first = TinyDetector()
    with pytest.raises(KeyboardInterrupt):
        _run(first, tmp_path / "resumed", stages, [StopAt(5)], data=data)
    assert tf.train.latest_checkpoint(str(tmp_path / "resumed")).endswith("ckpt-4")
    shutil.copytree(tmp_path / "resumed", tmp_path / "no_snapshot")
    second = TinyDetector(seed=77)  # another init: only the snapshot can give the initial one
    result = _run(second, tmp_path / "resumed", stages, data=data)
    assert result.stages_run == ["rfcn", "rpn_finetune", "rfcn_finetune"]
    for a, b in zip(reference.weights, second.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    # Without the snapshot the rerun refuses instead of silently keeping step 1's backbone.
    shutil.rmtree(tmp_path / "no_snapshot" / "initial_backbone")
    with pytest.raises(ckpt_lib.CheckpointError, match="initial backbone .* is missing"):
        _run(TinyDetector(), tmp_path / "no_snapshot", stages, data=data)


def test_resume_refuses_another_class_count_or_scheme(tmp_path):
    _run(TinyDetector(), tmp_path, build_stages("alternating", steps=2))
    with pytest.raises(
        ckpt_lib.CheckpointError, match="trained with 2 classes but this model has 3"
    ):
        _run(
            TinyDetector(num_classes=3),
            tmp_path,
            build_stages("alternating", steps=3),
            num_classes=3,
        )
    with pytest.raises(ckpt_lib.CheckpointError, match="taken in stage 4 but this scheme has 1"):
        _run(TinyDetector(), tmp_path, build_stages("joint", steps=20))


def test_init_checkpoint_loads_weights_and_rejects_misfits(tmp_path):
    source = TinyDetector(seed=5)
    result = _run(source, tmp_path / "a", build_stages("joint", steps=2))
    target = TinyDetector(seed=9)
    ckpt_lib.restore_model_weights(target, str(tmp_path / "a"), num_classes=2)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(
        ckpt_lib.CheckpointError, match="trained with 2 classes but this model has 4"
    ):
        ckpt_lib.restore_model_weights(
            TinyDetector(num_classes=4), result.checkpoint, num_classes=4
        )
    with pytest.raises(ckpt_lib.CheckpointError, match="does not fit this model"):
        ckpt_lib.restore_model_weights(
            TinyDetector(batch_norm=True), result.checkpoint, num_classes=2
        )
    with pytest.raises(
        ckpt_lib.CheckpointError, match="train.init_checkpoint=.*no checkpoint there"
    ):
        ckpt_lib.restore_model_weights(TinyDetector(), str(tmp_path / "nothing"), num_classes=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt_lib.CheckpointError, match="the folder holds no checkpoint"):
        ckpt_lib.resolve_checkpoint(str(tmp_path / "empty"), what="train.init_checkpoint")
    # Through run_training: used only for a fresh start.
    fresh = TinyDetector(seed=11)
    _run(
        fresh,
        tmp_path / "b",
        build_stages("joint", steps=1),
        init_checkpoint=str(tmp_path / "a"),
        checkpoint_every=0,
    )
    with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint there"):
        _run(
            TinyDetector(),
            tmp_path / "c",
            build_stages("joint", steps=1),
            init_checkpoint=str(tmp_path / "missing"),
        )


def test_frozen_restores_each_sublayer_flag():
    model = TinyDetector(batch_norm=True)
    inner = model.backbone.layers[0]
    inner.trainable = False  # frozen on purpose by the backbone (like ResNet's stem)
    with frozen([model.backbone]):
        assert not model.backbone.trainable and not model.backbone.layers[1].trainable
        assert not model.backbone.trainable_variables
    assert model.backbone.trainable and model.backbone.layers[1].trainable
    assert not inner.trainable  # still frozen afterwards


def test_stage_variables_and_groups():
    model = TinyDetector()
    stages = build_stages("alternating", steps=1)
    names = [sorted({v.path.split("/")[0] for v in stage_variables(model, s)}) for s in stages]
    assert names == [["backbone", "rpn"], ["backbone", "rfcn"], ["rpn"], ["rfcn"]]
    assert len(stage_variables(model, build_stages("joint", steps=1)[0])) == len(
        model.trainable_variables
    )

    class NoHead(keras.Model):
        backbone = None

    with pytest.raises(ValueError, match="has no 'backbone' part"):
        model_groups(NoHead())
