"""The R-FCN detector (Dai et al., NIPS 2016): the keras.Model composing every part.

Shape shorthand:
    B     batch size
    Hp,Wp padded input size, pixels (the batch's images are zero-padded bottom/right)
    h,w   feature map size, ceil(Hp / 16), ceil(Wp / 16)
    A     anchors per location; N = h*w*A anchors
    G     padded ground-truth boxes per image
    P     proposals per image (rpn_post_nms_top_n_train / _test, static)
    R     RoIs per image scored by the head: P at inference, P + G in training (the
          ground-truth boxes are appended, R-FCN sec. 2 "Training")
    C     object classes (1..C), class 0 is background
    M     max_detections

Naming convention: `*_logits` raw scores, `*_probs` softmax/sigmoid, `*_deltas` raw
(dy, dx, dh, dw), `gt_*` ground truth, boxes are yxyx float32 pixels of the resized input
image (DESIGN.md).

Data flow (top to bottom, sec. 2 "Overview"):
    uint8 images -> backbone (its first layer normalizes pixels) -> (conv4, conv5)
    conv4 -> RPNHead -> objectness logits, deltas + AnchorGenerator anchors
          -> generate_proposals (decode, clip to image_shapes, top-N, NMS, pad to P;
             stop_gradient: approximate joint training, Faster R-CNN sec. 3.2)
    training: roi_targets (ground truth appended; labels, box targets)
    conv5 -> RFCNHead on the RoIs -> class logits, class-agnostic deltas
    training: rpn_losses + rfcn_losses (OHEM, sec. 2) -> named loss dict
    inference: softmax -> postprocess_detections (per-class NMS) -> detections

Padding: `image_shapes` gives each image's real size. Proposals are clipped to it, so anchors
in the zero padding give degenerate boxes that generate_proposals drops; anchors whose centre
lies in the padding are ignored by rpn_targets; detections are clipped to it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rfcn_tf.model.anchors import AnchorGenerator
from rfcn_tf.model.losses import rfcn_losses, rpn_losses
from rfcn_tf.model.postprocess import postprocess_detections
from rfcn_tf.model.proposals import generate_proposals
from rfcn_tf.model.rfcn_head import RFCNHead
from rfcn_tf.model.rpn import RPNHead, flatten_rpn_outputs
from rfcn_tf.model.targets import roi_targets, rpn_targets

LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "rfcn_class_loss", "rfcn_box_loss", "total_loss")
LOSS_GROUPS = ("rpn", "rfcn")
ROI_SAMPLINGS = ("ohem", "balanced")

_IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
_SHAPES_SPEC = tf.TensorSpec([None, 2], tf.int32, name="image_shapes")


@keras.saving.register_keras_serializable(package="rfcn_tf")
class RFCN(keras.Model):
    """R-FCN: backbone, RPN, proposals, position-sensitive head, losses and detections.

    Args:
        backbone: a Keras model mapping uint8 `[B, H, W, 3]` to `(rpn_features
            [B, h, w, Cr], head_features [B, h, w, Ch])` at stride `feature_stride` (see
            backbones.py). Serialized with the model.
        num_classes: C, object classes without background.
        anchor_scales: anchor sizes, sqrt(area) in pixels.
        anchor_ratios: anchor height / width ratios.
        feature_stride: backbone stride in pixels (16).
        rpn_channels: width of the RPN's 3x3 conv.
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test: boxes per image kept before the
            proposal NMS.
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: P, proposals per image after NMS
            (2000 training, 300 testing).
        rpn_nms_iou: proposal NMS IoU (0.7).
        rpn_min_size: proposals smaller than this (pixels) are dropped.
        rpn_positive_iou, rpn_negative_iou: anchor labelling thresholds (0.7, 0.3).
        rpn_batch_size, rpn_positive_fraction: anchors sampled per image, positive share.
        rpn_allowed_border: None keeps anchors crossing the image border; b >= 0 ignores
            anchors extending more than b pixels beyond it (Faster R-CNN sec. 3.3: 0).
        head_channels: width of the head's 1x1 reducing conv (1024).
        ps_k: k, the position-sensitive grid (7).
        pooling_mode: `"avg"` | `"bilinear"`.
        sampling_ratio: bilinear pooling samples per bin side.
        psroi_impl: `"auto"` | `"custom"` | `"tf"` (see rfcn_tf.ops.psroi_pool).
        roi_foreground_iou: RoIs with IoU >= this are foreground (0.5).
        roi_background_iou_low: lowest IoU of a background RoI (0.0).
        roi_sampling: `"ohem"` (R-FCN sec. 2: the roi_batch_size highest-loss RoIs) or
            `"balanced"` (random, roi_foreground_fraction foreground).
        roi_batch_size: RoIs per image that contribute to the head's loss (128).
        roi_foreground_fraction: foreground share for balanced sampling (0.25).
        ohem_nms_iou: None, or NMS IoU among RoIs before OHEM selection.
        box_weights: box-coder weights of the head's deltas, (10, 10, 5, 5).
        score_threshold, nms_iou, max_detections: post-processing (0.05, 0.3, 100).
        rpn_loss_weight, rfcn_loss_weight: weights of the two loss groups in total_loss.
        seed: None (random sampling draws fresh keys each step), or an int for reproducible
            anchor/RoI sampling (stateless; see compute_losses' `seed` for per-step seeds).

    Call arguments:
        inputs: `{"images": uint8 [B, Hp, Wp, 3], "image_shapes": int32 [B, 2]}`.
        training: backbone normalization mode and the proposal counts used.

    Returns (call):
        dict: `rpn_objectness_logits [B,h,w,A]`, `rpn_box_deltas [B,h,w,4A]`,
        `anchors [N,4]`, `proposals [B,P,4]`, `proposal_scores [B,P]`, `num_proposals [B]`,
        `rois [B,P,4]` (= proposals), `roi_valid [B,P]` bool, `class_logits [B,P,C+1]`,
        `class_probs [B,P,C+1]`, `box_deltas [B,P,4]`; all float32 except the counts/masks.

    Example:
        >>> model = RFCN(backbone=SmallBackbone(), num_classes=3, anchor_scales=[32, 64])
        >>> detections = model.detect(images_uint8, image_shapes_int32)
    """

    def __init__(
        self,
        *,
        backbone,
        num_classes,
        anchor_scales=(128.0, 256.0, 512.0),
        anchor_ratios=(0.5, 1.0, 2.0),
        feature_stride=16,
        rpn_channels=512,
        rpn_pre_nms_top_n_train=12000,
        rpn_pre_nms_top_n_test=6000,
        rpn_post_nms_top_n_train=2000,
        rpn_post_nms_top_n_test=300,
        rpn_nms_iou=0.7,
        rpn_min_size=0.0,
        rpn_positive_iou=0.7,
        rpn_negative_iou=0.3,
        rpn_batch_size=256,
        rpn_positive_fraction=0.5,
        rpn_allowed_border=None,
        head_channels=1024,
        ps_k=7,
        pooling_mode="avg",
        sampling_ratio=2,
        psroi_impl="auto",
        roi_foreground_iou=0.5,
        roi_background_iou_low=0.0,
        roi_sampling="ohem",
        roi_batch_size=128,
        roi_foreground_fraction=0.25,
        ohem_nms_iou=None,
        box_weights=(10.0, 10.0, 5.0, 5.0),
        score_threshold=0.05,
        nms_iou=0.3,
        max_detections=100,
        rpn_loss_weight=1.0,
        rfcn_loss_weight=1.0,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "rfcn")
        super().__init__(**kwargs)
        if roi_sampling not in ROI_SAMPLINGS:
            raise ValueError(f"roi_sampling must be one of {ROI_SAMPLINGS}, got {roi_sampling!r}")
        if len(box_weights) != 4:
            raise ValueError(f"box_weights must have 4 values (wy, wx, wh, ww), got {box_weights!r}")
        if getattr(backbone, "feature_stride", feature_stride) != feature_stride:
            raise ValueError(
                f"feature_stride={feature_stride!r} differs from the backbone's stride "
                f"{backbone.feature_stride!r}"
            )
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.anchor_scales = [float(v) for v in anchor_scales]
        self.anchor_ratios = [float(v) for v in anchor_ratios]
        self.feature_stride = int(feature_stride)
        self.rpn_channels = int(rpn_channels)
        self.rpn_pre_nms_top_n_train = int(rpn_pre_nms_top_n_train)
        self.rpn_pre_nms_top_n_test = int(rpn_pre_nms_top_n_test)
        self.rpn_post_nms_top_n_train = int(rpn_post_nms_top_n_train)
        self.rpn_post_nms_top_n_test = int(rpn_post_nms_top_n_test)
        self.rpn_nms_iou = float(rpn_nms_iou)
        self.rpn_min_size = float(rpn_min_size)
        self.rpn_positive_iou = float(rpn_positive_iou)
        self.rpn_negative_iou = float(rpn_negative_iou)
        self.rpn_batch_size = int(rpn_batch_size)
        self.rpn_positive_fraction = float(rpn_positive_fraction)
        self.rpn_allowed_border = None if rpn_allowed_border is None else float(rpn_allowed_border)
        self.head_channels = int(head_channels)
        self.ps_k = int(ps_k)
        self.pooling_mode = pooling_mode
        self.sampling_ratio = int(sampling_ratio)
        self.psroi_impl = psroi_impl
        self.roi_foreground_iou = float(roi_foreground_iou)
        self.roi_background_iou_low = float(roi_background_iou_low)
        self.roi_sampling = roi_sampling
        self.roi_batch_size = int(roi_batch_size)
        self.roi_foreground_fraction = float(roi_foreground_fraction)
        self.ohem_nms_iou = None if ohem_nms_iou is None else float(ohem_nms_iou)
        self.box_weights = [float(v) for v in box_weights]
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.rpn_loss_weight = float(rpn_loss_weight)
        self.rfcn_loss_weight = float(rfcn_loss_weight)
        self.seed = None if seed is None else int(seed)

        self.anchor_generator = AnchorGenerator(
            stride=self.feature_stride, scales=self.anchor_scales, aspect_ratios=self.anchor_ratios
        )
        self.rpn_head = RPNHead(
            num_anchors=self.anchor_generator.num_anchors_per_location,
            channels=self.rpn_channels,
            name="rpn_head",
            dtype=self.dtype_policy,
        )
        self.rfcn_head = RFCNHead(
            num_classes=self.num_classes,
            channels=self.head_channels,
            ps_k=self.ps_k,
            pooling_mode=self.pooling_mode,
            sampling_ratio=self.sampling_ratio,
            feature_stride=self.feature_stride,
            psroi_impl=self.psroi_impl,
            name="rfcn_head",
            dtype=self.dtype_policy,
        )
        self.build()

    def build(self, input_shape=None):
        """Creates every variable (the backbone is built at construction): after this the
        model can `load_weights` without a forward pass. `input_shape` is ignored."""
        rpn_shape, head_shape = (tuple(t.shape) for t in self.backbone.outputs)
        self.rpn_head.build(rpn_shape)
        self.rfcn_head.build(head_shape, (None, None, 4))
        self.built = True

    # ------------------------------------------------------------------ forward pieces
    def _proposal_counts(self, counts):
        if counts == "train":
            return self.rpn_pre_nms_top_n_train, self.rpn_post_nms_top_n_train
        if counts == "test":
            return self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_test
        raise ValueError(f"proposal_counts must be 'train', 'test' or None, got {counts!r}")

    def _features_and_proposals(
        self, images, image_shapes, training, with_proposals=True, proposal_counts=None
    ):
        """Backbone, RPN head, anchors and (unless with_proposals=False) proposals; shared by
        call, propose and compute_losses. proposal_counts None follows `training`."""
        rpn_features, head_features = self.backbone(images, training=training)
        rpn_logits_map, rpn_deltas_map = self.rpn_head(rpn_features)
        height, width = tf.shape(rpn_features)[1], tf.shape(rpn_features)[2]
        anchors = self.anchor_generator(height, width)  # [N, 4]
        rpn_logits, rpn_deltas = flatten_rpn_outputs(rpn_logits_map, rpn_deltas_map)
        stage = {
            "head_features": head_features,
            "rpn_objectness_logits": tf.cast(rpn_logits_map, tf.float32),
            "rpn_box_deltas": tf.cast(rpn_deltas_map, tf.float32),
            "rpn_logits_flat": rpn_logits,
            "rpn_deltas_flat": rpn_deltas,
            "anchors": anchors,
        }
        if not with_proposals:
            return stage
        if proposal_counts is None:
            proposal_counts = "train" if training else "test"
        pre_nms_top_n, post_nms_top_n = self._proposal_counts(proposal_counts)
        # generate_proposals stop_gradients its outputs: approximate joint training
        # (Faster R-CNN sec. 3.2), the head treats proposals as fixed inputs.
        proposals, scores, num_proposals = generate_proposals(
            rpn_logits,
            rpn_deltas,
            anchors,
            image_shapes,
            pre_nms_top_n=pre_nms_top_n,
            post_nms_top_n=post_nms_top_n,
            nms_iou=self.rpn_nms_iou,
            min_size=self.rpn_min_size,
        )
        stage.update(proposals=proposals, proposal_scores=scores, num_proposals=num_proposals)
        return stage

    def call(self, inputs, training=False):
        images = inputs["images"]
        image_shapes = tf.cast(inputs["image_shapes"], tf.int32)
        stage = self._features_and_proposals(images, image_shapes, training)
        proposals = stage["proposals"]
        class_logits, box_deltas = self.rfcn_head(stage["head_features"], proposals)
        roi_valid = tf.range(tf.shape(proposals)[1])[None, :] < stage["num_proposals"][:, None]
        return {
            "rpn_objectness_logits": stage["rpn_objectness_logits"],
            "rpn_box_deltas": stage["rpn_box_deltas"],
            "anchors": stage["anchors"],
            "proposals": proposals,
            "proposal_scores": stage["proposal_scores"],
            "num_proposals": stage["num_proposals"],
            "rois": proposals,
            "roi_valid": roi_valid,
            "class_logits": class_logits,
            "class_probs": tf.nn.softmax(class_logits, axis=-1),
            "box_deltas": box_deltas,
        }

    def propose(self, features, *, training=False, proposal_counts=None):
        """RPN proposals only (backbone + RPN head + generate_proposals).

        Args:
            features: dict with `images` uint8 `[B,Hp,Wp,3]` and `image_shapes` int32 `[B,2]`
                (other keys ignored).
            training: backbone normalization mode (False: BatchNorm uses moving statistics).
            proposal_counts: `"train"` (rpn_*_top_n_train), `"test"` (rpn_*_top_n_test) or
                None (follow `training`). The 4-step alternating scheme's frozen RPN copy uses
                `training=False, proposal_counts="train"`.

        Returns:
            `{"proposals": float32 [B,P,4] yxyx pixels (zeros past the count), "scores":
            float32 [B,P], "num_proposals": int32 [B]}`, all stop_gradient-ed.
        """
        stage = self._features_and_proposals(
            features["images"],
            tf.cast(features["image_shapes"], tf.int32),
            training,
            proposal_counts=proposal_counts,
        )
        return {
            "proposals": stage["proposals"],
            "scores": stage["proposal_scores"],
            "num_proposals": stage["num_proposals"],
        }

    # ------------------------------------------------------------------ training
    def compute_losses(self, features, *, training=True, include=("rpn", "rfcn"), seed=None):
        """The named training losses of one batch.

        Args:
            features: the batched-features dict of INTERFACES.md: `images` uint8
                `[B,Hp,Wp,3]`, `image_shapes` int32 `[B,2]`, `gt_boxes` float32 `[B,G,4]` yxyx
                pixels, `gt_classes` int32 `[B,G]` in 1..C, `gt_mask` bool `[B,G]` (other keys
                are ignored). Optional `proposals` float32 `[B,P,4]` and `num_proposals`
                int32 `[B]` replace the RPN's proposals (the 4-step alternating scheme trains
                the head on a fixed RPN's proposals).
            training: backbone normalization mode and the train/test proposal counts.
            include: loss groups to compute, a subset of `("rpn", "rfcn")`; the others are
                0 (and the head is not run when "rfcn" is left out).
            seed: None (the model's `seed`), an int or an int32/int64 `[2]` tensor (e.g.
                `(seed, step)`): stateless, reproducible anchor/RoI sampling.

        Returns:
            `{"rpn_objectness_loss", "rpn_box_loss", "rfcn_class_loss", "rfcn_box_loss",
            "total_loss"}`, float32 scalars. total_loss = rpn_loss_weight * (rpn terms) +
            rfcn_loss_weight * (rfcn terms). Each term is a mean over the sampled anchors /
            selected RoIs of the whole batch (a train step under N replicas divides by N).
        """
        include = tuple(include)
        unknown = [name for name in include if name not in LOSS_GROUPS]
        if unknown or not include:
            raise ValueError(f"include must be a non-empty subset of {LOSS_GROUPS}, got {include!r}")
        if seed is None and self.seed is not None:
            seed = self.seed
        images = features["images"]
        image_shapes = tf.cast(features["image_shapes"], tf.int32)
        gt_boxes = tf.cast(features["gt_boxes"], tf.float32)
        gt_classes = tf.cast(features["gt_classes"], tf.int32)
        gt_mask = tf.cast(features["gt_mask"], tf.bool)
        given_proposals = "proposals" in features
        stage = self._features_and_proposals(
            images, image_shapes, training, with_proposals="rfcn" in include and not given_proposals
        )
        zero = tf.constant(0.0, tf.float32)
        losses = dict.fromkeys(LOSS_NAMES[:-1], zero)

        if "rpn" in include:
            anchor_targets = rpn_targets(
                stage["anchors"],
                gt_boxes,
                gt_mask,
                image_shapes,
                positive_iou=self.rpn_positive_iou,
                negative_iou=self.rpn_negative_iou,
                batch_size_per_image=self.rpn_batch_size,
                positive_fraction=self.rpn_positive_fraction,
                allowed_border=self.rpn_allowed_border,
                seed=seed,
            )
            losses.update(
                rpn_losses(
                    stage["rpn_logits_flat"],
                    stage["rpn_deltas_flat"],
                    anchor_targets["labels"],
                    anchor_targets["box_targets"],
                )
            )

        if "rfcn" in include:
            if given_proposals:
                proposals = tf.stop_gradient(tf.cast(features["proposals"], tf.float32))
                num_proposals = tf.cast(features["num_proposals"], tf.int32)
            else:
                proposals, num_proposals = stage["proposals"], stage["num_proposals"]
            targets = roi_targets(
                proposals,
                num_proposals,
                gt_boxes,
                gt_classes,
                gt_mask,
                foreground_iou=self.roi_foreground_iou,
                background_iou_low=self.roi_background_iou_low,
                box_weights=self.box_weights,
            )
            class_logits, box_deltas = self.rfcn_head(stage["head_features"], targets["rois"])
            losses.update(
                rfcn_losses(
                    class_logits,
                    box_deltas,
                    targets,
                    sampling=self.roi_sampling,
                    batch_size_per_image=self.roi_batch_size,
                    foreground_fraction=self.roi_foreground_fraction,
                    ohem_nms_iou=self.ohem_nms_iou,
                    seed=seed,
                )
            )

        losses["total_loss"] = self.rpn_loss_weight * (
            losses["rpn_objectness_loss"] + losses["rpn_box_loss"]
        ) + self.rfcn_loss_weight * (losses["rfcn_class_loss"] + losses["rfcn_box_loss"])
        return {name: losses[name] for name in LOSS_NAMES}

    # ------------------------------------------------------------------ inference
    @tf.function(input_signature=[_IMAGES_SPEC, _SHAPES_SPEC])
    def detect(self, images, image_shapes):
        """Detections of a batch (one graph for every image size and batch size).

        Args:
            images: uint8 `[B, Hp, Wp, 3]` RGB, zero-padded bottom/right.
            image_shapes: int32 `[B, 2]` (height, width) of each image before padding.

        Returns:
            `{"detection_boxes": float32 [B, M, 4] yxyx pixels of the resized image (clipped
            to image_shapes), "detection_scores": float32 [B, M], "detection_classes": int32
            [B, M] in 1..C, "num_detections": int32 [B]}`, M = max_detections, rows past
            num_detections are zeros.
        """
        return self.detect_raw(images, image_shapes)

    def detect_raw(self, images, image_shapes):
        """`detect` without its tf.function (to embed in another graph, e.g. an export)."""
        outputs = self({"images": images, "image_shapes": image_shapes}, training=False)
        return postprocess_detections(
            outputs["rois"],
            outputs["class_probs"],
            outputs["box_deltas"],
            image_shapes,
            outputs["roi_valid"],
            box_weights=self.box_weights,
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
            max_detections_per_class=self.max_detections,
        )

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "anchor_scales": list(self.anchor_scales),
            "anchor_ratios": list(self.anchor_ratios),
            "feature_stride": self.feature_stride,
            "rpn_channels": self.rpn_channels,
            "rpn_pre_nms_top_n_train": self.rpn_pre_nms_top_n_train,
            "rpn_pre_nms_top_n_test": self.rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_train": self.rpn_post_nms_top_n_train,
            "rpn_post_nms_top_n_test": self.rpn_post_nms_top_n_test,
            "rpn_nms_iou": self.rpn_nms_iou,
            "rpn_min_size": self.rpn_min_size,
            "rpn_positive_iou": self.rpn_positive_iou,
            "rpn_negative_iou": self.rpn_negative_iou,
            "rpn_batch_size": self.rpn_batch_size,
            "rpn_positive_fraction": self.rpn_positive_fraction,
            "rpn_allowed_border": self.rpn_allowed_border,
            "head_channels": self.head_channels,
            "ps_k": self.ps_k,
            "pooling_mode": self.pooling_mode,
            "sampling_ratio": self.sampling_ratio,
            "psroi_impl": self.psroi_impl,
            "roi_foreground_iou": self.roi_foreground_iou,
            "roi_background_iou_low": self.roi_background_iou_low,
            "roi_sampling": self.roi_sampling,
            "roi_batch_size": self.roi_batch_size,
            "roi_foreground_fraction": self.roi_foreground_fraction,
            "ohem_nms_iou": self.ohem_nms_iou,
            "box_weights": list(self.box_weights),
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "max_detections": self.max_detections,
            "rpn_loss_weight": self.rpn_loss_weight,
            "rfcn_loss_weight": self.rfcn_loss_weight,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"], custom_objects=custom_objects
        )
        return cls(**config)
