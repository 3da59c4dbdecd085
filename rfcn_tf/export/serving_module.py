"""``DetectorServingModule``: the serving signatures around an R-FCN detector.

The contract (signature keys, tensor names, shapes, semantics) is ``rfcn_tf.export.contract``.
Inside the graph, per image (R-FCN sec. 3, single-scale testing), through THE inference path
``rfcn_tf.inference.preprocess``: ``preprocess`` (the evaluation resize: shorter side
``min_size``, longer side at most ``max_size``; zero-pad bottom/right to a multiple of 16),
the model's forward pass, post-processing (``rfcn_tf.model.postprocess``), ``normalize_boxes``.

Batches:

- ``serving_default`` / ``serving_custom``: the N images share one size, so they resize and
  pad to one size and run as one batch.
- ``serving_encoded`` / ``tf_example``: each image is decoded and preprocessed on its own.
  When all padded sizes agree they run as one batch; otherwise each image runs at its own
  padded size (a loop in the graph). Padding an image further would change its detections:
  the backbone normalizes pixels, so zero padding is not zero to the convolutions, and
  features near the bottom/right border would differ from the single-image call. Either way
  each image's outputs equal its single-image outputs (to float round-off).

Decoding: ``rfcn_tf.images.decode_image``, the decoder training, evaluation and predict use
(JPEG, PNG, GIF first frame, BMP, WebP to 3-channel uint8; 16-bit PNGs scaled to 8 bits; a
JPEG's EXIF orientation applied, as a photo viewer shows it: served images carry no
annotation, so that is the rule for them).

Bad input: a wrong dtype fails TensorFlow's signature type check; a wrong rank or channel
count fails an ``EnsureShape`` op; N = 0, an empty image and a string that is not an image
file fail InvalidArgument assertions that say so.

Shape shorthand: N images, H/W original, h/w resized, Hp/Wp padded, M max detections, R RoIs
per image, C classes without background.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from rfcn_tf.export.contract import (
    IMAGE_MAGIC,
    INPUT_ENCODED,
    INPUT_IMAGE,
    INPUT_IOU_THRESHOLD,
    INPUT_MAX_DETECTIONS,
    INPUT_SCORE_THRESHOLD,
    INPUT_TF_EXAMPLE,
    SIGNATURE_CUSTOM,
    SIGNATURE_ENCODED,
    SIGNATURE_IMAGE,
    SIGNATURE_TF_EXAMPLE,
    SIZE_MULTIPLE,
    TF_EXAMPLE_IMAGE_KEY,
)
from rfcn_tf.images import decode_image
from rfcn_tf.inference.preprocess import normalize_boxes, pad_batch, preprocess
from rfcn_tf.model.postprocess import postprocess_detections, raw_detections


class _ModelView:
    """Holds the model without tf.Module tracking it (see ``captured_variables``)."""

    def __init__(self, model: Any):
        self.model = model


class DetectorServingModule(tf.Module):
    """The four serving signatures around a detector (module docstring).

    Args:
      model: an ``RFCN`` (built with ``psroi_impl="tf"`` for a stock-op graph), or anything
        with its inference contract: ``model({"images": uint8 [N, Hp, Wp, 3], "image_shapes":
        int32 [N, 2]}, training=False)`` returning ``rois`` [N, R, 4], ``class_probs``
        [N, R, C+1], ``box_deltas`` [N, R, 4] (or [N, R, C, 4]), ``roi_valid`` [N, R], the
        attribute ``num_classes`` and ``postprocessor`` (``rfcn_tf.model.postprocess.
        PostProcessor``: ``box_weights`` and ``config.score_threshold``, ``nms_iou``,
        ``max_detections``).
      min_size: shorter side of the resized image, pixels (``evaluation_scale(data.scales)``).
      max_size: cap on the longer side of the resized image, pixels (``data.max_size``).
      size_multiple: the padded image's sides are multiples of this (the feature stride).
      assets: file paths saved as assets (``labels.txt``, ``export.json``).

    Attributes:
      captured_variables: the tf.Variables the signatures read (what the SavedModel saves).
      defaults: ``{"score_threshold", "iou_threshold", "max_detections"}`` of the model,
        what ``serving_default`` uses and ``serving_custom`` is compared against.
    """

    def __init__(
        self,
        model: Any,
        *,
        min_size: int,
        max_size: int,
        size_multiple: int = SIZE_MULTIPLE,
        assets: list[str] | None = None,
    ):
        super().__init__(name="rfcn_serving")
        if min_size < 1 or max_size < min_size:
            raise ValueError(
                f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}"
            )
        if size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
        self._view = _ModelView(model)
        # One trace of the model and post-processing, called by every signature (a function
        # call in their graphs): tracing the detector once instead of six times (two per
        # signature that decodes) cuts the export's time several-fold.
        self._view.detect = tf.function(
            self._detect_traced,
            autograph=False,
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.uint8),
                tf.TensorSpec([None, 2], tf.int32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.int32),
            ],
        )
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.size_multiple = int(size_multiple)
        post = model.postprocessor.config
        self.defaults = {
            "score_threshold": float(post.score_threshold),
            "iou_threshold": float(post.nms_iou),
            "max_detections": int(post.max_detections),
        }
        self.assets = [tf.saved_model.Asset(path) for path in assets or []]
        image_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_IMAGE)
        # Only the concrete functions are attributes (saved as the signatures): a tf.function
        # attribute would be traced again inside tf.saved_model.save, whose save context
        # changes the tracing cache key, doubling the export's tracing time.
        self._concrete = {
            SIGNATURE_IMAGE: tf.function(
                self._serve_images, autograph=False, input_signature=[image_spec]
            ).get_concrete_function(),
            SIGNATURE_ENCODED: tf.function(
                self._serve_encoded,
                autograph=False,
                input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_ENCODED)],
            ).get_concrete_function(),
            SIGNATURE_TF_EXAMPLE: tf.function(
                self._serve_tf_example,
                autograph=False,
                input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_TF_EXAMPLE)],
            ).get_concrete_function(),
            SIGNATURE_CUSTOM: tf.function(
                self._serve_custom,
                autograph=False,
                input_signature=[
                    image_spec,
                    tf.TensorSpec([], tf.float32, name=INPUT_SCORE_THRESHOLD),
                    tf.TensorSpec([], tf.float32, name=INPUT_IOU_THRESHOLD),
                    tf.TensorSpec([], tf.int32, name=INPUT_MAX_DETECTIONS),
                ],
            ).get_concrete_function(),
        }
        # Track exactly the tf.Variables the signatures capture (as Keras' own ExportArchive
        # does). Tracking the Keras model instead saves each Keras 3 variable as a second
        # resource: TF2's loader remaps captures to it, but TF1-style loaders (TF Serving,
        # saved_model_cli run) restore that copy and leave the captured ones uninitialized.
        seen: set[int] = set()
        captured = []
        for function in self._concrete.values():
            for variable in function.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    captured.append(variable)
        self.captured_variables = captured

    def signatures(self) -> dict[str, Any]:
        """Signature key -> concrete function, for ``tf.saved_model.save``."""
        return dict(self._concrete)

    # ------------------------------------------------------------------------ signatures

    def _serve_images(self, input_tensor):
        return self._detect_same_size(input_tensor, **self._default_tensors())

    def _serve_custom(self, input_tensor, score_threshold, iou_threshold, max_detections):
        checks = [
            tf.debugging.assert_greater_equal(
                score_threshold, 0.0, message=(f"{INPUT_SCORE_THRESHOLD} must be >= 0")
            ),
            tf.debugging.assert_less_equal(
                score_threshold, 1.0, message=(f"{INPUT_SCORE_THRESHOLD} must be <= 1")
            ),
            tf.debugging.assert_greater_equal(
                iou_threshold, 0.0, message=(f"{INPUT_IOU_THRESHOLD} must be in [0, 1]")
            ),
            tf.debugging.assert_less_equal(
                iou_threshold, 1.0, message=(f"{INPUT_IOU_THRESHOLD} must be in [0, 1]")
            ),
            tf.debugging.assert_greater_equal(
                max_detections, 1, message=(f"{INPUT_MAX_DETECTIONS} must be >= 1")
            ),
        ]
        with tf.control_dependencies(checks):
            score_threshold = tf.identity(score_threshold)
        return self._detect_same_size(
            input_tensor,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )

    def _serve_encoded(self, encoded_image_string_tensor):
        return self._detect_encoded(encoded_image_string_tensor, INPUT_ENCODED)

    def _serve_tf_example(self, tf_example):
        tf_example = _assert_batch(tf_example, INPUT_TF_EXAMPLE)
        features = tf.io.parse_example(
            tf_example, {TF_EXAMPLE_IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
        )
        return self._detect_encoded(
            features[TF_EXAMPLE_IMAGE_KEY], f"{INPUT_TF_EXAMPLE}'s {TF_EXAMPLE_IMAGE_KEY}"
        )

    # ------------------------------------------------------------------------ the steps

    def _default_tensors(self) -> dict[str, tf.Tensor]:
        return {
            "score_threshold": tf.constant(self.defaults["score_threshold"], tf.float32),
            "iou_threshold": tf.constant(self.defaults["iou_threshold"], tf.float32),
            "max_detections": tf.constant(self.defaults["max_detections"], tf.int32),
        }

    def _preprocess(self, image):
        return preprocess(
            image, min_size=self.min_size, max_size=self.max_size, size_multiple=self.size_multiple
        )

    def _detect_same_size(self, images, **post):
        """uint8 [N, H, W, 3], one size -> outputs: one batch."""
        images = tf.ensure_shape(images, [None, None, None, 3])
        images = _assert_batch(images, INPUT_IMAGE)
        images = _assert_not_empty(images, tf.shape(images)[1:3], INPUT_IMAGE)
        padded, resized_hw = tf.map_fn(
            self._preprocess,
            images,
            fn_output_signature=(
                tf.TensorSpec([None, None, 3], tf.uint8),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        return self._detect(padded, resized_hw, **post)

    def _detect_encoded(self, strings, what: str):
        """string [N] of any sizes -> outputs (module docstring, "Batches")."""
        strings = tf.ensure_shape(strings, [None])
        strings = _assert_batch(strings, what)

        def decode_and_preprocess(data):
            head = tf.strings.substr(data, 0, 8)
            is_image = tf.reduce_any(
                tf.stack(
                    [
                        tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
                        for magic, _ in IMAGE_MAGIC
                    ]
                )
            )
            check = tf.debugging.Assert(
                is_image,
                [
                    f"an element of {what} is not a JPEG, PNG, GIF, BMP or WebP file; its length in "
                    "bytes and first bytes are:",
                    tf.strings.length(data),
                    head,
                ],
                summarize=8,
            )
            with tf.control_dependencies([check]):
                image = decode_image(data)
            image = _assert_not_empty(image, tf.shape(image)[:2], what)
            padded, resized_hw = self._preprocess(image)
            return tf.RaggedTensor.from_tensor(padded), resized_hw

        ragged, resized_hw = tf.map_fn(
            decode_and_preprocess,
            strings,
            fn_output_signature=(
                tf.RaggedTensorSpec([None, None, 3], tf.uint8, ragged_rank=1),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        batch, _ = pad_batch(ragged, size_multiple=self.size_multiple)
        padded_hw = tf.stack(
            [
                ragged.row_lengths(axis=1),
                tf.gather(ragged.values.row_lengths(), ragged.row_starts()),
            ],
            1,
        )
        same_size = tf.reduce_all(tf.equal(padded_hw, padded_hw[:1]))
        post = self._default_tensors()

        def one_by_one():
            def one(index):
                image = ragged[index].to_tensor()
                out = self._detect(image[None], resized_hw[index][None], **post)
                return {key: value[0] for key, value in out.items()}

            spec = {
                key: tf.TensorSpec(value.shape[1:], value.dtype)
                for key, value in self._output_spec().items()
            }
            return tf.map_fn(one, tf.range(tf.shape(strings)[0]), fn_output_signature=spec)

        return tf.cond(same_size, lambda: self._detect(batch, resized_hw, **post), one_by_one)

    def _output_spec(self) -> dict[str, tf.TensorSpec]:
        """The outputs' specs with the batch dimension (M and C+1 static, R left open)."""
        m = self.defaults["max_detections"]
        c1 = int(self._view.model.num_classes) + 1
        f32 = tf.float32
        return {
            "detection_boxes": tf.TensorSpec([None, m, 4], f32),
            "detection_scores": tf.TensorSpec([None, m], f32),
            "detection_classes": tf.TensorSpec([None, m], f32),
            "num_detections": tf.TensorSpec([None], f32),
            "detection_multiclass_scores": tf.TensorSpec([None, m, c1], f32),
            "detection_anchor_indices": tf.TensorSpec([None, m], f32),
            "raw_detection_boxes": tf.TensorSpec([None, None, 4], f32),
            "raw_detection_scores": tf.TensorSpec([None, None, c1], f32),
        }

    def _detect(self, padded, resized_hw, *, score_threshold, iou_threshold, max_detections):
        """A padded batch -> the contract's outputs (normalized to each resized image)."""
        return self._view.detect(
            padded,
            tf.cast(resized_hw, tf.int32),
            tf.cast(score_threshold, tf.float32),
            tf.cast(iou_threshold, tf.float32),
            tf.cast(max_detections, tf.int32),
        )

    def _detect_traced(self, padded, image_shapes, score_threshold, iou_threshold, max_detections):
        """``_detect``'s graph, traced once: uint8 [N, Hp, Wp, 3], int32 [N, 2], scalars."""
        model = self._view.model
        out = model({"images": padded, "image_shapes": image_shapes}, training=False)
        limit = self.defaults["max_detections"]  # M, the static output size
        box_weights = model.postprocessor.box_weights
        det = postprocess_detections(
            out["rois"],
            out["class_probs"],
            out["box_deltas"],
            image_shapes,
            out["roi_valid"],
            box_weights=box_weights,
            score_threshold=score_threshold,
            nms_iou=iou_threshold,
            max_detections=limit,
            max_detections_per_class=limit,
        )
        raw_boxes, raw_scores = raw_detections(
            out["rois"],
            out["class_probs"],
            out["box_deltas"],
            image_shapes,
            out["roi_valid"],
            box_weights=box_weights,
        )
        # max_detections below M: the detections are sorted by score, so keeping the first k
        # rows equals NMS with max_total_size k (per class, k <= M keeps the same top k).
        keep_k = tf.minimum(tf.cast(max_detections, tf.int32), limit)
        num = tf.minimum(tf.cast(det["num_detections"], tf.int32), keep_k)
        valid = tf.range(limit)[None, :] < num[:, None]  # [N, M]
        classes = tf.where(valid, tf.cast(det["detection_classes"], tf.int32), 0)
        boxes = tf.where(valid[:, :, None], det["detection_boxes"], 0.0)
        scores = tf.where(valid, det["detection_scores"], 0.0)
        source = _source_rois(raw_boxes, raw_scores, boxes, scores, classes)
        source = tf.where(valid, source, 0)
        multiclass = tf.where(valid[:, :, None], tf.gather(raw_scores, source, batch_dims=1), 0.0)
        return {
            "detection_boxes": tf.where(
                valid[:, :, None], normalize_boxes(boxes, image_shapes), 0.0
            ),
            "detection_scores": scores,
            "detection_classes": tf.cast(classes, tf.float32),
            "num_detections": tf.cast(num, tf.float32),
            "detection_multiclass_scores": multiclass,
            "detection_anchor_indices": tf.cast(source, tf.float32),
            "raw_detection_boxes": normalize_boxes(raw_boxes, image_shapes),
            "raw_detection_scores": raw_scores,
        }


def _source_rois(raw_boxes, raw_scores, boxes, scores, classes):
    """For each detection, the RoI it came from: int32 [N, M] in 0..R-1.

    NMS copies its inputs, so a detection of class c equals one RoI's class-c probability
    exactly, and with class-agnostic boxes that RoI's raw box too: the RoI with the smallest
    score difference is taken, the box difference breaking ties (0 for padding rows, which
    callers mask).
    """
    class_scores = tf.gather(raw_scores, classes, axis=2, batch_dims=1)  # [N, R, M]
    score_gap = tf.abs(class_scores - scores[:, None, :])
    box_gap = tf.reduce_max(tf.abs(raw_boxes[:, :, None, :] - boxes[:, None, :, :]), -1)
    return tf.argmin(score_gap * 1e4 + box_gap, axis=1, output_type=tf.int32)


def _assert_batch(tensor, what: str):
    """``tensor``, checked at run time to hold at least one image (InvalidArgument)."""
    check = tf.debugging.assert_greater(
        tf.shape(tensor)[0], 0, message=(f"{what} holds no image (batch size 0); send at least one")
    )
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def _assert_not_empty(image, hw, what: str):
    check = tf.debugging.Assert(
        tf.reduce_all(hw >= 1),
        [f"{what}: every image must have height and width >= 1; got (H, W) =", hw],
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)
