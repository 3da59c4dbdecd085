"""Exact data resume: an interrupted and resumed run equals an uninterrupted one.

The real input pipeline (synthetic shapes, fixed seed, deterministic order) feeds the stand-in
detector through run_training; a run stopped after step 4 (checkpoint there) and rerun to step
8 must end with the weights of a run that went to 8 at once, for both ways of resuming the
stream (the iterator in the checkpoint; a deterministic skip). Starting the stream afresh
(``none``) trains on other batches after the resume, so its weights differ: the comparison
can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers.engine_standin import IMAGE_SIZE, TinyDetector

from rfcn_tf.config import load_config
from rfcn_tf.data.pipeline import build_dataset
from rfcn_tf.engine import schemes
from rfcn_tf.engine.data_resume import checkpoint_has_iterator, choose_data_resume
from rfcn_tf.engine.optimizer import build_lr_schedule, build_optimizer

STEPS, CUT = 8, 4


def _cfg():
    return load_config(
        "shapes_tiny",
        [
            f"data.shapes.image_size={IMAGE_SIZE}",
            f"data.scales=[{IMAGE_SIZE}]",
            f"data.max_size={IMAGE_SIZE}",
            "data.max_boxes=4",
            "data.shapes.max_objects=3",
            "data.shapes.min_size=0.25",
            "data.deterministic=true",
            "data.seed=3",
            "data.shapes.seed=5",
        ],
    )


def _run(workdir, mode, *, stop_at=None):
    tf.keras.utils.set_random_seed(0)
    cfg = _cfg()
    model = TinyDetector(num_classes=3)

    def dataset_fn(context):
        return build_dataset(
            cfg.data, split="train", training=True, batch_size=2, input_context=context
        )

    def optimizer_fn(variables, steps):
        schedule = build_lr_schedule(
            base_lr=0.1, total_steps=steps, schedule="cosine", warmup_steps=2, warmup_factor=0.1
        )
        return build_optimizer(
            variables=variables, learning_rate=schedule, momentum=0.9, weight_decay=1e-3
        )

    class Interrupt(schemes.Hook):
        def after_step(self, loop, step, logs):
            if step == stop_at:
                raise KeyboardInterrupt

    try:
        result = schemes.run_training(
            model=model,
            strategy=tf.distribute.get_strategy(),
            dataset_fn=dataset_fn,
            stages=schemes.build_stages("joint", steps=STEPS),
            optimizer_fn=optimizer_fn,
            checkpoint_dir=str(workdir),
            num_classes=3,
            global_batch_size=2,
            checkpoint_every=2,
            hooks_fn=lambda stage, total: [Interrupt()],
            data_resume=mode,
        )
    except KeyboardInterrupt:
        return None, None
    return result, [v.numpy() for v in model.trainable_variables]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("full"), "iterator")[1]


@pytest.mark.parametrize("mode", ["iterator", "skip"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, uninterrupted, mode):
    _run(tmp_path, mode, stop_at=CUT + 1)  # dies after step 5: the checkpoint of step 4 is kept
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{CUT}")
    assert checkpoint_has_iterator(tf.train.latest_checkpoint(str(tmp_path))) == (
        mode == "iterator"
    )
    result, weights = _run(tmp_path, mode)
    assert result.step == STEPS and result.data_resume == mode
    for got, want in zip(weights, uninterrupted):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_a_fresh_stream_after_resume_trains_on_other_batches(tmp_path, uninterrupted):
    _run(tmp_path, "none", stop_at=CUT + 1)
    result, weights = _run(tmp_path, "none")
    assert result.data_resume == "none"
    assert max(np.abs(a - b).max() for a, b in zip(weights, uninterrupted)) > 1e-4


def test_auto_picks_skip_for_cached_pipelines():
    strategy = tf.distribute.get_strategy()
    assert choose_data_resume("auto", cached=False, strategy=strategy) == "iterator"
    assert choose_data_resume("auto", cached=True, strategy=strategy) == "skip"
    with pytest.raises(ValueError, match="train.data_resume must be one of"):
        choose_data_resume("rewind", cached=False, strategy=strategy)
