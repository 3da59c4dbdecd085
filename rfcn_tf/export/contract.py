"""The serving contract of an exported R-FCN detector: signature keys, tensor names, files.

TF-free on purpose: the serving client (``rfcn_tf.serving.tf_serving_client``) imports it
without TensorFlow, and the export writes exactly these names. Names follow the TF Object
Detection API's exporter (``exporter_lib_v2`` and its Faster R-CNN post-processing), so OD API
clients and visualization tools read the outputs unchanged.

Signatures (every one batched: N >= 1 images per request):

- ``serving_default``: ``input_tensor`` uint8 [N, H, W, 3] RGB, one size per batch (as the OD
  API's ``image_tensor`` export).
- ``serving_encoded``: ``encoded_image_string_tensor`` string [N], the bytes of JPEG, PNG, GIF
  (first frame), BMP or WebP files of ANY sizes (REST: ``{"b64": ...}``); each decoded, resized and
  padded inside the graph.
- ``tf_example``: ``tf_example`` string [N], serialized ``tf.train.Example`` protos whose
  ``image/encoded`` feature holds the encoded image (the OD API's ``tf_example`` input).
- ``serving_custom``: ``input_tensor`` as ``serving_default`` plus the scalars
  ``score_threshold`` float32, ``iou_threshold`` float32 and ``max_detections`` int32:
  post-processing chosen per request; with the model's defaults (``export.json``'s
  ``postprocess``) it equals ``serving_default``.

Outputs of every signature (float32, as the OD API exporter casts them; M = the model's
``max_detections``, R = RoIs scored per image, C classes without background):

- ``detection_boxes`` [N, M, 4]: yxyx normalized to [0, 1] w.r.t. the ORIGINAL image.
- ``detection_scores`` [N, M]; ``detection_classes`` [N, M] in 1..C (``labels.txt`` line i
  names class i); ``num_detections`` [N]; rows from ``num_detections`` on are zero.
- ``detection_multiclass_scores`` [N, M, C+1]: the softmax over background and the C classes
  of the RoI each detection came from (column 0 background); zero on padding rows.
- ``detection_anchor_indices`` [N, M]: index in 0..R-1 of that RoI (row of ``raw_*``); zero
  on padding rows.
- ``raw_detection_boxes`` [N, R, 4]: every RoI's decoded box before NMS, normalized and
  clipped to [0, 1] like ``detection_boxes`` (R-FCN's box branch is class-agnostic: one box
  per RoI).
- ``raw_detection_scores`` [N, R, C+1]: every RoI's softmax before NMS (column 0
  background); zero for RoI slots the RPN left empty.
"""

from __future__ import annotations

SIGNATURE_IMAGE = "serving_default"
SIGNATURE_ENCODED = "serving_encoded"
SIGNATURE_TF_EXAMPLE = "tf_example"
SIGNATURE_CUSTOM = "serving_custom"
SIGNATURES = (SIGNATURE_IMAGE, SIGNATURE_ENCODED, SIGNATURE_TF_EXAMPLE, SIGNATURE_CUSTOM)

INPUT_IMAGE = "input_tensor"
INPUT_ENCODED = "encoded_image_string_tensor"
INPUT_TF_EXAMPLE = "tf_example"
INPUT_SCORE_THRESHOLD = "score_threshold"
INPUT_IOU_THRESHOLD = "iou_threshold"
INPUT_MAX_DETECTIONS = "max_detections"
CUSTOM_INPUTS = (INPUT_SCORE_THRESHOLD, INPUT_IOU_THRESHOLD, INPUT_MAX_DETECTIONS)
# The tf.train.Example feature holding the encoded image (the OD API's key).
TF_EXAMPLE_IMAGE_KEY = "image/encoded"

# The four outputs every detection client reads ...
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
# ... and the rest of the OD API's set.
EXTRA_OUTPUT_KEYS = (
    "detection_multiclass_scores",
    "detection_anchor_indices",
    "raw_detection_boxes",
    "raw_detection_scores",
)
ALL_OUTPUT_KEYS = OUTPUT_KEYS + EXTRA_OUTPUT_KEYS

LABELS_FILENAME = "labels.txt"  # assets/labels.txt: line i names class id i (1..C)
EXPORT_INFO_FILENAME = "export.json"  # assets/export.json: resize and post-processing defaults
# TF Serving's --batching_parameters_file, written in the model base beside the versions.
BATCHING_PARAMETERS_FILENAME = "batching_parameters.txt"
SIZE_MULTIPLE = 16  # the serving graph pads to the backbone's stride

# Leading bytes of the formats the encoded signatures decode.
IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WebP"),
)
