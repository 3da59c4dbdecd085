"""Keras fit(): RFCN.train_step/test_step delegate to compute_losses, so compile + fit on a
rfcn_tf.data dataset trains like the custom loop (same weights to 1e-4 from the same start and
data), logs the named losses and works with Keras' ModelCheckpoint and TensorBoard callbacks."""

import glob
import os

import keras
import numpy as np
import tensorflow as tf

from rfcn_tf.config import load_config
from rfcn_tf.data.pipeline import build_dataset
from rfcn_tf.engine.optimizer import build_lr_schedule, build_optimizer
from rfcn_tf.engine.train_step import build_train_step
from rfcn_tf.model.builder import build_detector
from rfcn_tf.model.detector import LOSS_NAMES

STEPS = 3
OVERRIDES = [
    "data.shapes.image_size=64",
    "data.scales=[64]",
    "data.max_size=64",
    "data.max_boxes=6",
    "data.random_flip=false",
    "data.deterministic=true",
    "model.backbone.small_widths=[8,16,16,32]",
    "model.anchors.scales=[16.0,32.0]",
    "model.rpn.channels=16",
    "model.head.channels=32",
    "model.head.k=3",
    "model.rpn.pre_nms_top_n_train=128",
    "model.rpn.post_nms_top_n_train=32",
    "model.rpn.batch_size_per_image=64",
    "model.roi.batch_size_per_image=16",
    "model.seed=0",  # stateless anchor sampling: both loops draw the same anchors
]


def _setup():
    cfg = load_config(None, OVERRIDES)
    keras.utils.set_random_seed(0)
    model = build_detector(cfg.model, num_classes=3)
    batches = list(
        build_dataset(cfg.data, split=cfg.data.train_split, training=True, batch_size=2).take(STEPS)
    )
    dataset = tf.data.Dataset.from_tensors(batches[0])
    for batch in batches[1:]:
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(batch))
    return cfg, model, dataset


def _optimizer(cfg, model):
    schedule = build_lr_schedule(
        base_lr=0.02, total_steps=STEPS, schedule="cosine", warmup_steps=1, warmup_factor=0.5
    )
    return build_optimizer(
        variables=model.trainable_variables,
        learning_rate=schedule,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        clip_norm=cfg.train.clip_norm,
    )


def test_fit_and_the_custom_loop_reach_the_same_weights():
    cfg, fitted, dataset = _setup()
    looped = build_detector(cfg.model, num_classes=3)
    looped.set_weights(fitted.get_weights())
    start = [w.copy() for w in fitted.get_weights()]

    fitted.compile(optimizer=_optimizer(cfg, fitted))
    history = fitted.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0)
    assert set(LOSS_NAMES) | {"loss"} <= set(history.history)

    strategy = tf.distribute.get_strategy()
    optimizer = _optimizer(cfg, looped)
    step = build_train_step(looped, optimizer, strategy, variables=looped.trainable_variables)
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: dataset))
    for _ in range(STEPS):
        step(iterator)

    moved = 0
    for a, b, s in zip(fitted.get_weights(), looped.get_weights(), start):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        moved += int(not np.allclose(a, s))
    assert moved > len(start) // 2  # the steps did train (not two untouched copies)
    assert int(fitted.optimizer.iterations) == int(optimizer.iterations) == STEPS


def test_fit_logs_named_losses_with_checkpoint_and_tensorboard_callbacks(tmp_path):
    cfg, model, dataset = _setup()
    model.compile(optimizer=_optimizer(cfg, model))
    path = str(tmp_path / "ckpt-{epoch}.weights.h5")
    callbacks = [
        keras.callbacks.ModelCheckpoint(path, save_weights_only=True),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
    ]
    history = model.fit(
        dataset.repeat(),
        epochs=2,
        steps_per_epoch=STEPS,
        verbose=0,
        validation_data=dataset,
        callbacks=callbacks,
    )
    for name in LOSS_NAMES:
        assert len(history.history[name]) == 2 and np.isfinite(history.history[name]).all()
        assert np.isfinite(history.history[f"val_{name}"]).all()
    assert glob.glob(str(tmp_path / "tb" / "train" / "events.out.tfevents.*"))
    saved = str(tmp_path / "ckpt-2.weights.h5")
    assert os.path.isfile(saved)
    fresh = build_detector(cfg.model, num_classes=3)
    fresh.load_weights(saved)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    evaluated = model.evaluate(dataset, verbose=0, return_dict=True)
    assert set(LOSS_NAMES) <= set(evaluated)
    # the running means are no model state: checkpoints keep their variables
    assert len(model.weights) == len(fresh.weights)
