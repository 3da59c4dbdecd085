"""Tests for rfcn_tf.engine.callbacks: checkpoint cadence, TensorBoard events, progress and logs."""

from __future__ import annotations

import glob
import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers.engine_standin import TinyDetector, dataset_fn

from rfcn_tf.engine.callbacks import (
    CheckpointHook,
    ImageSummaryHook,
    LoggingHook,
    ProgressHook,
    SummaryHook,
    format_duration,
)
from rfcn_tf.engine.loop import Hook, NonFiniteLossError, TrainLoop
from rfcn_tf.engine.optimizer import build_optimizer
from rfcn_tf.engine.train_step import build_train_step


def _loop(model, hooks, end_step, start=0):
    strategy = tf.distribute.get_strategy()
    variables = model.trainable_variables
    optimizer = build_optimizer(variables=variables, learning_rate=0.05)
    counter = tf.Variable(start, dtype=tf.int64)
    loop = TrainLoop(
        step_fn=build_train_step(model, optimizer, strategy, variables=variables),
        iterator=iter(strategy.distribute_datasets_from_function(dataset_fn(2))),
        step_counter=counter,
        end_step=end_step,
        global_batch_size=2,
        learning_rate_fn=lambda: 0.05,
        hooks=hooks,
        name="joint",
    )
    return loop, optimizer, counter


def read_events(directory):
    """{tag: [(step, value)]} of every scalar and image summary under ``directory``."""
    found = {}
    for path in sorted(
        glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)
    ):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return found


def test_checkpoint_every_n_steps_and_at_end_keeping_the_last_k(tmp_path):
    model = TinyDetector()
    loop, optimizer, counter = _loop(model, [], end_step=10)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=counter)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    saved = []
    hook = CheckpointHook(manager, every=3)
    original = manager.save
    manager.save = lambda checkpoint_number: (
        saved.append(checkpoint_number) or original(checkpoint_number=checkpoint_number)
    )
    loop.hooks = [hook]
    loop.run()
    assert saved == [3, 6, 9, 10]
    assert [os.path.basename(p) for p in manager.checkpoints] == ["ckpt-9", "ckpt-10"]
    assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.index"))) == [
        "ckpt-10.index",
        "ckpt-9.index",
    ]
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-10"))
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 10
    assert hook.last_path.endswith("ckpt-10")


def test_checkpoint_hook_rejects_negative_interval(tmp_path):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path), max_to_keep=1)
    with pytest.raises(ValueError, match="checkpoint interval must be >= 0 steps, got -1"):
        CheckpointHook(manager, every=-1)


def test_summaries_hold_each_loss_lr_and_throughput(tmp_path):
    model = TinyDetector()
    writer = tf.summary.create_file_writer(str(tmp_path))
    loop, _, _ = _loop(model, [SummaryHook(writer, every=2)], end_step=5)
    loop.run()
    events = read_events(str(tmp_path))
    for tag in (
        "loss/total_loss",
        "loss/rpn_objectness_loss",
        "loss/rpn_box_loss",
        "loss/rfcn_class_loss",
        "loss/rfcn_box_loss",
        "train/learning_rate",
    ):
        assert [s for s, _ in events[tag]] == [2, 4, 5], tag
    assert all(float(v) == pytest.approx(0.05) for _, v in events["train/learning_rate"])
    assert all(float(v) > 0 for _, v in events["train/images_per_sec"])
    assert all(np.isfinite(float(v)) for _, v in events["loss/total_loss"])


def test_image_summary_draws_predicted_boxes(tmp_path):
    model = TinyDetector()
    images = np.zeros([2, 32, 32, 3], np.uint8)
    shapes = np.array([[32, 32], [24, 32]], np.int32)
    writer = tf.summary.create_file_writer(str(tmp_path))
    hook = ImageSummaryHook(
        writer,
        detect_fn=model.detect,
        images=images,
        image_shapes=shapes,
        class_names=["a", "b"],
        every=3,
        min_score=0.0,
    )
    drawn = hook.render()
    assert drawn.shape == images.shape and drawn.dtype == np.uint8
    # The stand-in predicts box (4, 4, 20, 24): its outline is drawn, the far corner is not.
    assert drawn[0, 4, 10].any() and not drawn[0, 30, 30].any()
    assert not drawn[1, 24:].any()  # padding below the image's own shape stays empty
    loop, _, _ = _loop(model, [hook], end_step=4)
    loop.run()
    events = read_events(str(tmp_path))
    assert [s for s, _ in events["val/detections"]] == [3, 4]
    blob = events["val/detections"][-1][1]  # TensorBoard's layout: width, height, PNGs
    assert (int(blob[0]), int(blob[1])) == (32, 32) and len(blob) == 2 + 2
    np.testing.assert_array_equal(tf.io.decode_png(blob[2]).numpy(), hook.render()[0])
    with pytest.raises(ValueError, match="images must be uint8"):
        ImageSummaryHook(
            writer,
            detect_fn=model.detect,
            images=images.astype(np.float32),
            image_shapes=shapes,
            class_names=["a", "b"],
            every=1,
        )


def test_logging_hook_lines_name_step_losses_lr_throughput_and_eta(caplog):
    model = TinyDetector()
    log = logging.getLogger("test_engine_callbacks")
    loop, _, _ = _loop(model, [LoggingHook(total_steps=6, every=2, log=log)], end_step=6)
    with caplog.at_level(logging.INFO, logger="test_engine_callbacks"):
        loop.run()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["2/6", "4/6", "6/6"]
    first = lines[0]
    for part in ("[joint]", "total_loss=", "rfcn_class_loss=", "lr=5.000e-02", "images/s=", "eta="):
        assert part in first, (part, first)
    assert lines[-1].startswith("joint: 6 steps in ")


def test_progress_bar_counts_global_steps(monkeypatch):
    stream = io.StringIO()
    import tqdm.auto

    original = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **k: original(*a, file=stream, **k))
    model = TinyDetector()
    hook = ProgressHook(total_steps=8, disable=False)
    loop, _, _ = _loop(model, [hook], end_step=8, start=5)
    loop.run()
    text = stream.getvalue()
    assert "8/8" in text and "loss=" in text and "img/s=" in text, text
    assert hook.bar is None  # closed


def test_format_duration():
    assert format_duration(65) == "1:05"
    assert format_duration(3725.2) == "1:02:05"
    assert format_duration(-3) == "0:00"


def test_checkpoint_hook_refuses_non_finite_weights(tmp_path):
    """BatchNorm statistics can overflow while the loss is finite: no save from such weights."""
    model = TinyDetector(batch_norm=True)
    loop, optimizer, counter = _loop(model, [], end_step=4)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=counter)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    hook = CheckpointHook(manager, every=2)

    class Poison(Hook):
        def after_step(self, loop, step, logs):
            if step == 3:
                model.backbone.get_layer("bn").moving_variance.assign(np.full([8], np.inf))

    loop.hooks = [hook, Poison()]
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite model weights at step 4 \(the losses "
        r"were finite\): backbone/bn/moving_variance.*ckpt-2 \(not overwritten\)",
    ):
        loop.run()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    assert not glob.glob(str(tmp_path / "ckpt-4*"))


def _fill_disk_at(checkpoint, fail_prefix_suffix):
    """Makes ``checkpoint``'s save of the prefix ending in ``fail_prefix_suffix`` fail the way
    SaveV2 does on a full disk: a partial ``<prefix>_temp/`` file, then ResourceExhaustedError."""
    real_write = checkpoint._write

    def write(prefix, options=None, **kwargs):
        if not prefix.endswith(fail_prefix_suffix):
            return real_write(prefix, options=options, **kwargs)
        os.makedirs(prefix + "_temp")
        with open(
            os.path.join(prefix + "_temp", "part-00000-of-00001.data-00000-of-00001"), "wb"
        ) as f:
            f.write(b"\0" * 100)
        raise tf.errors.ResourceExhaustedError(
            None,
            None,
            f"{prefix}_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; No "
            f"space left on device [Op:SaveV2]",
        )

    checkpoint._write = write


def test_checkpoint_hook_disk_full_is_one_error_and_keeps_the_previous(tmp_path):
    from rfcn_tf.engine.checkpoints import CheckpointError, restore_model_weights

    model = TinyDetector()
    loop, optimizer, counter = _loop(model, [], end_step=4)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=counter)
    manager = tf.train.CheckpointManager(
        checkpoint, str(tmp_path), max_to_keep=3, checkpoint_name="ckpt"
    )
    _fill_disk_at(checkpoint, "ckpt-4")
    weights = {}

    class Remember(Hook):
        def after_step(self, loop, step, logs):
            weights[step] = model.rpn_head.kernel.numpy()

    loop.hooks = [CheckpointHook(manager, every=2), Remember()]
    with pytest.raises(CheckpointError) as err:
        loop.run()
    model_at_2 = weights[2]
    message = str(err.value)
    assert "\n" not in message
    assert f"cannot write checkpoint {tmp_path / 'ckpt-4'}: no space left on device" in message
    assert f"the previous checkpoint {tmp_path / 'ckpt-2'} is intact" in message
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
    ]  # no ckpt-4_temp left behind
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    fresh = TinyDetector(seed=5)
    assert restore_model_weights(fresh, str(tmp_path), num_classes=2).step == 2  # reads back
    np.testing.assert_array_equal(fresh.rpn_head.kernel.numpy(), model_at_2)
