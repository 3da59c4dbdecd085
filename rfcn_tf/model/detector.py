"""The R-FCN detector (Dai et al., NIPS 2016): the keras.Model composing every part.

Shape shorthand:
    B     batch size
    Hp,Wp padded input size, pixels (the batch's images are zero-padded bottom/right)
    h,w   feature map size, ceil(Hp / 16), ceil(Wp / 16)
    A     anchors per location; N = h*w*A anchors
    G     padded ground-truth boxes per image
    P     proposals per image (model.rpn.post_nms_top_n_train / _test, static)
    R     RoIs per image scored by the head: P at inference, P + G in training (the
          ground-truth boxes are appended, R-FCN sec. 2 "Training")
    C     object classes (1..C), class 0 is background
    q     box classes of the head's deltas: 1 (class-agnostic, the paper) or C
    M     max_detections

Naming convention: `*_logits` raw scores, `*_probs` softmax/sigmoid, `*_deltas` raw
(dy, dx, dh, dw), `gt_*` ground truth, boxes are yxyx float32 pixels of the resized input
image (docs/ARCHITECTURE.md).

The parts, each configured by its own section of `model` (rfcn_tf/model/sections.py):
    backbone       uint8 images -> (conv4, conv5) features (its first layer normalizes pixels)
    rpn            RPN (rpn.py, model.rpn + model.anchors): head, anchors, proposals
                   (stop_gradient: approximate joint training, Faster R-CNN sec. 3.2), anchor
                   targets and the RPN loss
    roi_sampler    RoISampler (roi_sampling.py, model.roi): RoI targets (ground truth
                   appended), OHEM (R-FCN sec. 2) or balanced selection
    rfcn_head      RFCNHead (rfcn_head.py, model.head): PS score maps, PS-RoI pooling, voting
    postprocessor  PostProcessor (postprocess.py, model.postprocess): decode, per-class NMS

Padding: `image_shapes` gives each image's real size. Proposals are clipped to it, so anchors
in the zero padding give degenerate boxes that generate_proposals drops; anchors whose centre
lies in the padding are ignored by rpn_targets; detections are clipped to it.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rfcn_tf.model.losses import rfcn_per_roi_losses, selected_mean
from rfcn_tf.model.postprocess import PostProcessor
from rfcn_tf.model.rfcn_head import RFCNHead
from rfcn_tf.model.roi_sampling import RoISampler
from rfcn_tf.model.rpn import RPN
from rfcn_tf.model.sections import ROI_SAMPLINGS

__all__ = ["LOSS_GROUPS", "LOSS_NAMES", "RFCN", "ROI_SAMPLINGS"]

LOSS_NAMES = (
    "rpn_objectness_loss",
    "rpn_box_loss",
    "rfcn_class_loss",
    "rfcn_box_loss",
    "total_loss",
)
LOSS_GROUPS = ("rpn", "rfcn")

_IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
_SHAPES_SPEC = tf.TensorSpec([None, 2], tf.int32, name="image_shapes")


@keras.saving.register_keras_serializable(package="rfcn_tf")
class RFCN(keras.Model):
    """R-FCN: backbone, RPN, RoI sampling, position-sensitive head and post-processing.

    Args:
        backbone: a Keras model mapping uint8 `[B, H, W, 3]` to `(rpn_features
            [B, h, w, Cr], head_features [B, h, w, Ch])` at stride `backbone.feature_stride`
            (16; see backbones.py). Serialized with the model.
        num_classes: C, object classes without background.
        anchors, rpn, roi, head, postprocess: the sections `AnchorsConfig`, `RPNConfig`,
            `RoIConfig`, `HeadConfig`, `PostprocessConfig` of rfcn_tf/model/sections.py (or
            their dicts, or None for the defaults), given to the component each configures.
        seed: None (random sampling draws fresh keys each step), or an int for reproducible
            anchor/RoI sampling (stateless; see compute_losses' `seed` for per-step seeds).

    Call arguments:
        inputs: `{"images": uint8 [B, Hp, Wp, 3], "image_shapes": int32 [B, 2]}`.
        training: backbone normalization mode and the proposal counts used.

    Returns (call):
        dict: `rpn_objectness_logits [B,h,w,A]`, `rpn_box_deltas [B,h,w,4A]`,
        `anchors [N,4]`, `proposals [B,P,4]`, `proposal_scores [B,P]`, `num_proposals [B]`,
        `rois [B,P,4]` (= proposals), `roi_valid [B,P]` bool, `class_logits [B,P,C+1]`,
        `class_probs [B,P,C+1]`, `box_deltas [B,P,q,4]`; all float32 except the counts/masks.

    Example:
        >>> model = RFCN(backbone=SmallBackbone(), num_classes=3,
        ...              anchors=AnchorsConfig(scales=[32.0, 64.0]))
        >>> detections = model.detect(images_uint8, image_shapes_int32)
    """

    def __init__(
        self,
        *,
        backbone,
        num_classes,
        anchors=None,
        rpn=None,
        roi=None,
        head=None,
        postprocess=None,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "rfcn")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.seed = None if seed is None else int(seed)
        stride = int(getattr(backbone, "feature_stride", 16))
        self.rpn = RPN(rpn, anchors, feature_stride=stride, dtype=self.dtype_policy)
        # The RPN's head convs keep the checkpoint name of earlier versions (model/rpn_head/...),
        # so their run folders still restore; the alternating scheme also finds them here.
        self.rpn_head = self.rpn.head
        self.roi_sampler = RoISampler(roi)
        self.rfcn_head = RFCNHead(
            num_classes=self.num_classes,
            config=head,
            feature_stride=stride,
            name="rfcn_head",
            dtype=self.dtype_policy,
        )
        self.postprocessor = PostProcessor(
            postprocess, box_weights=self.rfcn_head.config.box_weights
        )
        self.build()

    @property
    def feature_stride(self):
        return self.rpn.feature_stride

    def build(self, input_shape=None):
        """Creates every variable (the backbone is built at construction): after this the
        model can `load_weights` without a forward pass. `input_shape` is ignored."""
        rpn_shape, head_shape = (tuple(t.shape) for t in self.backbone.outputs)
        self.rpn.build(rpn_shape)
        self.rfcn_head.build(head_shape, (None, None, 4))
        self.built = True

    # ------------------------------------------------------------------ inference
    def call(self, inputs, training=False):
        image_shapes = tf.cast(inputs["image_shapes"], tf.int32)
        rpn_features, head_features = self.backbone(inputs["images"], training=training)
        rpn = self.rpn(rpn_features, image_shapes, proposal_counts="train" if training else "test")
        proposals, num_proposals = rpn["proposals"], rpn["num_proposals"]
        class_logits, box_deltas = self.rfcn_head(head_features, proposals)
        return {
            "rpn_objectness_logits": rpn["objectness_logits"],
            "rpn_box_deltas": rpn["box_deltas"],
            "anchors": rpn["anchors"],
            "proposals": proposals,
            "proposal_scores": rpn["proposal_scores"],
            "num_proposals": num_proposals,
            "rois": proposals,
            "roi_valid": tf.range(tf.shape(proposals)[1])[None, :] < num_proposals[:, None],
            "class_logits": class_logits,
            "class_probs": tf.nn.softmax(class_logits, axis=-1),
            "box_deltas": box_deltas,
        }

    def propose(self, features, *, training=False, proposal_counts=None):
        """RPN proposals only (backbone + RPN).

        Args:
            features: dict with `images` uint8 `[B,Hp,Wp,3]` and `image_shapes` int32 `[B,2]`
                (other keys ignored).
            training: backbone normalization mode (False: BatchNorm uses moving statistics).
            proposal_counts: `"train"` (model.rpn.*_top_n_train), `"test"` (*_top_n_test) or
                None (follow `training`). The 4-step alternating scheme's frozen RPN copy uses
                `training=False, proposal_counts="train"`.

        Returns:
            `{"proposals": float32 [B,P,4] yxyx pixels (zeros past the count), "scores":
            float32 [B,P], "num_proposals": int32 [B]}`, all stop_gradient-ed.
        """
        if proposal_counts is None:
            proposal_counts = "train" if training else "test"
        rpn_features, _ = self.backbone(features["images"], training=training)
        rpn = self.rpn(
            rpn_features,
            tf.cast(features["image_shapes"], tf.int32),
            proposal_counts=proposal_counts,
        )
        return {
            "proposals": rpn["proposals"],
            "scores": rpn["proposal_scores"],
            "num_proposals": rpn["num_proposals"],
        }

    @tf.function(input_signature=[_IMAGES_SPEC, _SHAPES_SPEC], autograph=False)
    def detect(self, images, image_shapes):
        """Detections of a batch (one graph for every image size and batch size).

        Args:
            images: uint8 `[B, Hp, Wp, 3]` RGB, zero-padded bottom/right.
            image_shapes: int32 `[B, 2]` (height, width) of each image before padding.

        Returns:
            `{"detection_boxes": float32 [B, M, 4] yxyx pixels of the resized image (clipped
            to image_shapes), "detection_scores": float32 [B, M], "detection_classes": int32
            [B, M] in 1..C, "num_detections": int32 [B]}`, M = max_detections, rows past
            num_detections are zeros. The same for class-agnostic and class-specific boxes.
        """
        return self.detect_raw(images, image_shapes)

    def detect_raw(self, images, image_shapes):
        """`detect` without its tf.function (to embed in another graph, e.g. an export)."""
        out = self({"images": images, "image_shapes": image_shapes}, training=False)
        return self.postprocessor(
            out["rois"], out["class_probs"], out["box_deltas"], image_shapes, out["roi_valid"]
        )

    # ------------------------------------------------------------------ training
    def compute_losses(self, features, *, training=True, include=LOSS_GROUPS, seed=None):
        """The named training losses of one batch.

        Args:
            features: the batched-features dict of docs/INTERFACES.md: `images` uint8
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
            "total_loss"}`, float32 scalars. total_loss = model.rpn.loss_weight * (rpn terms)
            + model.head.loss_weight * (rfcn terms). Each term is a mean over the sampled
            anchors / selected RoIs of the whole batch (a train step under N replicas divides
            by N).
        """
        include = tuple(include)
        if not include or any(name not in LOSS_GROUPS for name in include):
            raise ValueError(
                f"include must be a non-empty subset of {LOSS_GROUPS}, got {include!r}"
            )
        seed = self.seed if seed is None else seed
        image_shapes = tf.cast(features["image_shapes"], tf.int32)
        gt_boxes = tf.cast(features["gt_boxes"], tf.float32)
        gt_classes = tf.cast(features["gt_classes"], tf.int32)
        gt_mask = tf.cast(features["gt_mask"], tf.bool)
        given = "proposals" in features
        counts = "train" if training else "test"

        rpn_features, head_features = self.backbone(features["images"], training=training)
        rpn = self.rpn(
            rpn_features,
            image_shapes,
            proposal_counts=None if given or "rfcn" not in include else counts,
        )
        losses = dict.fromkeys(LOSS_NAMES[:-1], tf.constant(0.0, tf.float32))
        if "rpn" in include:
            losses.update(self.rpn.compute_losses(rpn, gt_boxes, gt_mask, image_shapes, seed=seed))
        if "rfcn" in include:
            if given:  # constants of the step: a fixed RPN's proposals
                proposals = tf.stop_gradient(tf.cast(features["proposals"], tf.float32))
                num_proposals = tf.cast(features["num_proposals"], tf.int32)
            else:
                proposals, num_proposals = rpn["proposals"], rpn["num_proposals"]
            targets = self.roi_sampler.targets(
                proposals,
                num_proposals,
                gt_boxes,
                gt_classes,
                gt_mask,
                box_weights=self.rfcn_head.config.box_weights,
            )
            class_logits, box_deltas = self.rfcn_head(head_features, targets["rois"])
            class_loss, box_loss = rfcn_per_roi_losses(class_logits, box_deltas, targets)
            selected = self.roi_sampler.select(class_loss + box_loss, targets, seed=seed)
            losses.update(selected_mean(class_loss, box_loss, selected))

        rpn_total = losses["rpn_objectness_loss"] + losses["rpn_box_loss"]
        rfcn_total = losses["rfcn_class_loss"] + losses["rfcn_box_loss"]
        losses["total_loss"] = (
            self.rpn.config.loss_weight * rpn_total + self.rfcn_head.config.loss_weight * rfcn_total
        )
        return {name: losses[name] for name in LOSS_NAMES}

    # ------------------------------------------------------------------ Keras fit()
    # `model.compile(optimizer=...)` then `model.fit(dataset)` on batched features from
    # rfcn_tf.data trains with the same step as the custom loop (rfcn_tf/engine/train_step.py):
    # losses = compute_losses(features); gradients of total_loss over the trainable variables;
    # optimizer.apply_gradients (weight decay and clipping live in the optimizer). The custom
    # loop stays the CLI's engine (stages, hooks, multi-worker); fit() is for Keras users.

    def compile(self, *args, jit_compile=False, **kwargs):
        """`keras.Model.compile` with XLA off by default (the compiled PS-RoI op and the NMS
        ops have no XLA kernels); give the optimizer, e.g. `engine.optimizer.build_optimizer`'s
        DetectionSGD (the paper's coupled weight decay). No `loss`: the model has its own."""
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    @property
    def metrics(self):
        """Keras' metrics plus one running mean per named loss (reset by fit every epoch)."""
        return list(super().metrics) + list(self._loss_means().values())

    def _loss_means(self):
        means = self.__dict__.get("_rfcn_loss_means")
        if means is None:
            # Kept out of Keras/TF tracking (plain __dict__ entry): the running means are no
            # model state, so checkpoints and weights stay as they were.
            means = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
            self.__dict__["_rfcn_loss_means"] = means
        return means

    def _log_losses(self, losses):
        means = self._loss_means()
        for name in LOSS_NAMES:
            means[name].update_state(losses[name])
        logs = {name: mean.result() for name, mean in means.items()}
        logs["loss"] = logs["total_loss"]  # Keras' conventional key (EarlyStopping, History)
        return logs

    @staticmethod
    def _features(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        """One Keras fit() step on a batched-features dict (docs/INTERFACES.md); returns the
        running means of the named losses (and `loss` = total_loss)."""
        features = self._features(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            losses = self.compute_losses(features, training=True)
            # as the engine's step: the optimizer sums the replicas' gradients
            loss = losses["total_loss"] / replicas
            if hasattr(self.optimizer, "scale_loss"):  # mixed precision: LossScaleOptimizer
                loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return self._log_losses(losses)

    def test_step(self, data):
        """The named losses of one batch in inference mode (BatchNorm statistics, test
        proposal counts), for `model.evaluate` and fit's validation."""
        return self._log_losses(self.compute_losses(self._features(data), training=False))

    # ------------------------------------------------------------------ serialization
    def section_configs(self):
        """`{"anchors", "rpn", "roi", "head", "postprocess"}`: the components' own sections."""
        return {
            "anchors": self.rpn.anchors_config,
            "rpn": self.rpn.config,
            "roi": self.roi_sampler.config,
            "head": self.rfcn_head.config,
            "postprocess": self.postprocessor.config,
        }

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "seed": self.seed,
        }
        config.update({k: dataclasses.asdict(v) for k, v in self.section_configs().items()})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"], custom_objects=custom_objects
        )
        return cls(**config)
