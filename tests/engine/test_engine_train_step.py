"""Tests for rfcn_tf.engine.train_step: one step equals the hand-written gradient step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers.engine_standin import TinyDetector, dataset_fn

from rfcn_tf.engine.optimizer import build_optimizer
from rfcn_tf.engine.train_step import build_train_step


def _batch(global_batch=2):
    return next(iter(dataset_fn(global_batch)(None)))


def _iterator(strategy, global_batch=2):
    return iter(strategy.distribute_datasets_from_function(dataset_fn(global_batch)))


def test_one_step_is_plain_sgd_on_the_total_loss():
    strategy = tf.distribute.get_strategy()
    model = TinyDetector()
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    features = _batch()
    with tf.GradientTape() as tape:
        expected_losses = model.compute_losses(features, training=True)
    grads = tape.gradient(expected_losses["total_loss"], variables)
    optimizer = build_optimizer(
        variables=variables, learning_rate=0.1, momentum=0.0, weight_decay=0.0
    )
    step = build_train_step(model, optimizer, strategy, variables=variables)
    losses = step(_iterator(strategy))
    assert set(losses) == set(expected_losses)
    for name, value in expected_losses.items():
        assert float(losses[name]) == pytest.approx(float(value), rel=1e-6), name
    for variable, w0, g in zip(variables, before, grads):
        np.testing.assert_allclose(variable.numpy(), w0 - 0.1 * g.numpy(), rtol=1e-5, atol=1e-7)


def test_only_the_given_variables_move_and_include_selects_losses():
    strategy = tf.distribute.get_strategy()
    model = TinyDetector()
    rpn_only = model.backbone.trainable_variables + model.rpn_head.trainable_variables
    untouched = model.rfcn_head.trainable_variables
    before = [v.numpy().copy() for v in untouched]
    optimizer = build_optimizer(variables=rpn_only, learning_rate=0.1)
    step = build_train_step(model, optimizer, strategy, variables=rpn_only, include=("rpn",))
    losses = step(_iterator(strategy))
    assert float(losses["rfcn_class_loss"]) == 0.0
    assert float(losses["rpn_objectness_loss"]) > 0.0
    assert float(losses["total_loss"]) == pytest.approx(float(losses["rpn_objectness_loss"]))
    for variable, w0 in zip(untouched, before):
        np.testing.assert_array_equal(variable.numpy(), w0)
    assert int(optimizer.iterations.numpy()) == 1


def test_prepare_features_feeds_the_losses_without_gradient():
    strategy = tf.distribute.get_strategy()
    model = TinyDetector()
    seen = []

    def prepare(features):
        seen.append(True)
        side = 16  # TinyDetector's feature side for 32-pixel images
        return dict(features, proposals=tf.zeros([tf.shape(features["images"])[0], side, side, 1]))

    features = dict(_batch(), proposals=tf.zeros([2, 16, 16, 1]))
    expected = float(model.compute_losses(features, include=("rfcn",))["total_loss"])
    variables = model.rfcn_head.trainable_variables
    optimizer = build_optimizer(variables=variables, learning_rate=0.1)
    step = build_train_step(
        model, optimizer, strategy, variables=variables, include=("rfcn",), prepare_features=prepare
    )
    assert float(step(_iterator(strategy))["total_loss"]) == pytest.approx(expected, rel=1e-6)
    assert seen  # traced through prepare


def test_rejects_no_variables_and_a_loss_dict_without_total():
    strategy = tf.distribute.get_strategy()
    model = TinyDetector()
    optimizer = build_optimizer(variables=model.trainable_variables, learning_rate=0.1)
    with pytest.raises(ValueError, match="no variables"):
        build_train_step(model, optimizer, strategy, variables=[])

    class NoTotal(TinyDetector):
        def compute_losses(self, features, *, training=True, include=("rpn", "rfcn")):
            losses = super().compute_losses(features, training=training, include=include)
            losses.pop("total_loss")
            return losses

    broken = NoTotal()
    optimizer = build_optimizer(variables=broken.trainable_variables, learning_rate=0.1)
    step = build_train_step(broken, optimizer, strategy, variables=broken.trainable_variables)
    with pytest.raises(ValueError, match="no 'total_loss'"):
        step(_iterator(strategy))
