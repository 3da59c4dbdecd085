"""Bad inputs to the public PS-RoI op (`rfcn_tf.ops.ps_roi_pool`, both implementations): NaN and
inf RoIs pool to zeros (never a crash, never NaN out), bad shapes and batch indices are errors
naming the argument and the offending value."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from rfcn_tf.ops import ps_roi_pool
from rfcn_tf.ops.psroi_pool import custom_op_available

IMPLS = ["tf"] + (["custom"] if custom_op_available() else [])
FEATURES = np.random.default_rng(0).normal(size=(2, 8, 8, 2 * 2 * 3)).astype(np.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["avg", "bilinear"])
def test_non_finite_rois_pool_to_zero(impl, mode):
    rois = np.array(
        [[0, np.nan, 0, 4, 4], [1, 0, 0, np.inf, 4], [0, -np.inf, 0, 4, 4], [1, 0, 0, 4, 4]],
        np.float32,
    )
    out = ps_roi_pool(
        FEATURES, rois, output_size=2, spatial_scale=1.0, mode=mode, impl=impl
    ).numpy()
    assert out.shape == (4, 2, 2, 3) and np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:3], 0.0)
    assert np.any(out[3] != 0.0)  # the good RoI still pools


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_index_out_of_range_names_the_row_and_value(impl):
    rois = np.array([[0, 0, 0, 4, 4], [5, 0, 0, 4, 4]], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)batch.index.*5"):
        ps_roi_pool(FEATURES, rois, output_size=2, spatial_scale=1.0, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_shapes_name_the_argument(impl):
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"rois"):
        ps_roi_pool(FEATURES, np.zeros((1, 4), np.float32), output_size=2, impl=impl)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"(?i)channels"):
        ps_roi_pool(FEATURES[..., :5], np.zeros((1, 5), np.float32), output_size=2, impl=impl)
