"""Loop hooks: checkpoints, TensorBoard summaries, validation images, progress bar, log lines.

Every hook follows ``loop.Hook``: ``on_train_begin``, ``after_step(loop, step, logs)`` (``step``
1-based, global), ``on_train_end`` (normal end only) and ``on_train_failed``.

TensorBoard layout (one event file per run under ``<work_dir>/tensorboard/train``):
``loss/<name>`` for every loss component, ``train/learning_rate``, ``train/images_per_sec``,
``train/step_time``; ``val/detections`` images of a few validation images with their predicted
boxes (drawn with ``rfcn_tf.visualization.draw_boxes``).

The events are written with TensorFlow's own ``tf.summary.write`` and TensorBoard's plugin
metadata (scalars; images as ``[width, height, png...]``), so training does not need the
``tensorboard`` package; viewing them does (``pip install tensorboard``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from rfcn_tf.engine import checkpoints
from rfcn_tf.engine.loop import Hook, NonFiniteLossError, TrainLoop

__all__ = [
    "CheckpointHook",
    "ImageSummaryHook",
    "LoggingHook",
    "ProgressHook",
    "SummaryHook",
    "format_duration",
    "non_finite_variables",
    "write_images",
    "write_scalar",
]

logger = logging.getLogger("rfcn_tf.train")

_NOT_SCALARS = ("global_batch_size",)


def _metadata(plugin: str, data_class: int) -> summary_pb2.SummaryMetadata:
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    metadata.data_class = data_class
    return metadata


def write_scalar(name: str, value: float, step: int) -> None:
    """One TensorBoard scalar (``scalars`` plugin) to the default writer."""
    tf.summary.write(
        name,
        tf.constant(value, tf.float32),
        step=step,
        metadata=_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR),
    )


def write_images(name: str, images: np.ndarray, step: int) -> None:
    """TensorBoard images (``images`` plugin) to the default writer.

    Args:
      name: the tag.
      images: uint8 [N, H, W, 3] RGB.
      step: the global step.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    height, width = images.shape[1:3]
    encoded = [tf.io.encode_png(image) for image in images]
    tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height))] + encoded)
    tf.summary.write(
        name, tensor, step=step, metadata=_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
    )


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"``; ``65`` -> ``"1:05"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Throughput:
    """Mean step time over a sliding window, ignoring each loop's first step (tracing)."""

    def __init__(self, window: int = 50):
        self.window = window
        self.times: list[float] = []
        self.first_seen = False

    def reset(self) -> None:
        self.times.clear()
        self.first_seen = False

    def add(self, step_time: float) -> None:
        if not self.first_seen:  # the first call of a tf.function traces: not representative
            self.first_seen = True
            return
        self.times.append(step_time)
        del self.times[: -self.window]

    def mean_step_time(self) -> float | None:
        return float(np.mean(self.times)) if self.times else None


def non_finite_variables(variables) -> list[str]:
    """Paths of the variables holding a NaN or Inf (all float variables are checked)."""
    floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    if not floats:
        return []
    flags = _all_finite([v.value if hasattr(v, "value") else v for v in floats])
    return [getattr(v, "path", v.name) for v, ok in zip(floats, flags.numpy()) if not ok]


@tf.function(reduce_retracing=True)
def _all_finite(values):
    return tf.stack([tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float32))) for v in values])


class CheckpointHook(Hook):
    """Saves ``manager``'s checkpoint every ``every`` steps and at the end (keeps its max_to_keep).

    Before each save the model's variables are checked: a NaN/Inf anywhere (BatchNorm moving
    statistics can overflow while the loss is still finite) raises ``NonFiniteLossError``
    instead of overwriting the last good checkpoint.

    Args:
      manager: a ``tf.train.CheckpointManager`` over the training checkpoint (model, optimizer,
        step, stage). Files are named ``ckpt-<step>``.
      every: save when ``step % every == 0`` (0 = only at the end).
      save_at_end: also save after the last step (if that step was not just saved).
      discard: remove the manager's directory after each save (non-chief workers of a
        multi-worker run: they must take part in the save but their copy is not kept).
      check_variables: variables that must be finite for a save (default: the checkpoint's
        ``model`` variables when it has one).
    """

    def __init__(
        self,
        manager: tf.train.CheckpointManager,
        *,
        every: int,
        save_at_end: bool = True,
        discard: bool = False,
        check_variables=None,
    ):
        if every < 0:
            raise ValueError(f"checkpoint interval must be >= 0 steps, got {every}")
        self.manager = manager
        self.every = int(every)
        self.save_at_end = save_at_end
        self.discard = discard
        self.last_saved_step: int | None = None
        self.last_path: str | None = None
        if check_variables is None:
            model = getattr(manager.checkpoint, "model", None)
            check_variables = list(model.weights) if model is not None else []
        self.check_variables = list(check_variables)

    def _save(self, step: int) -> None:
        bad = non_finite_variables(self.check_variables)
        if bad:
            latest = self.manager.latest_checkpoint
            where = (
                f"The last good checkpoint is {latest} (not overwritten)."
                if latest
                else "No checkpoint was written yet."
            )
            raise NonFiniteLossError(
                f"non-finite model weights at step {step} (the losses were finite): "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Training stopped. {where} "
                f"Lower train.lr, raise train.warmup_steps or set train.clip_norm.",
                step=step,
                losses={},
            )
        # A failed save (disk full) is one CheckpointError naming the path, cleaned up.
        self.last_path = checkpoints.save_checkpoint(self.manager, step)
        self.last_saved_step = step
        if self.discard:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        else:
            logger.debug("saved checkpoint %s", self.last_path)

    def after_step(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> None:
        if self.every and step % self.every == 0:
            self._save(step)

    def on_train_end(self, loop: TrainLoop, logs: Mapping[str, float]) -> None:
        if self.save_at_end and self.last_saved_step != loop.step and loop.step > loop.start_step:
            self._save(loop.step)


class SummaryHook(Hook):
    """Writes TensorBoard scalars every ``every`` steps: losses, learning rate, images/s.

    Args:
      writer: a ``tf.summary`` writer (``tf.summary.create_noop_writer()`` on non-chief workers).
      every: steps between writes (also written after the last step).
    """

    def __init__(self, writer, *, every: int):
        if every < 1:
            raise ValueError(f"summary interval must be >= 1 step, got {every}")
        self.writer = writer
        self.every = int(every)
        self.throughput = _Throughput(window=every)
        self.last_written: int | None = None

    def on_train_begin(self, loop: TrainLoop) -> None:
        self.throughput.reset()

    def _write(self, step: int, logs: Mapping[str, float]) -> None:
        mean_time = self.throughput.mean_step_time()
        with self.writer.as_default():
            for name, value in logs.items():
                if name in _NOT_SCALARS or name in ("step_time", "images_per_sec", "learning_rate"):
                    continue
                write_scalar(f"loss/{name}", value, step)
            if "learning_rate" in logs:
                write_scalar("train/learning_rate", logs["learning_rate"], step)
            if mean_time is not None:
                write_scalar("train/step_time", mean_time, step)
                write_scalar("train/images_per_sec", logs["global_batch_size"] / mean_time, step)
        self.writer.flush()
        self.last_written = step

    def after_step(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> None:
        self.throughput.add(logs["step_time"])
        if step % self.every == 0:
            self._write(step, logs)

    def on_train_end(self, loop: TrainLoop, logs: Mapping[str, float]) -> None:
        if logs and self.last_written != loop.step:
            self._write(loop.step, logs)


class ImageSummaryHook(Hook):
    """Writes a few validation images with their predicted boxes to TensorBoard.

    Args:
      writer: a ``tf.summary`` writer.
      detect_fn: ``detect_fn(images, image_shapes) -> dict`` with NumPy-convertible
        ``detection_boxes`` [B, M, 4] (yxyx pixels of the resized image), ``detection_scores``
        [B, M], ``detection_classes`` [B, M] (1..C), ``num_detections`` [B].
      images: uint8 [B, Hp, Wp, 3], padded batch of validation images (resized).
      image_shapes: int32 [B, 2], (height, width) of each image before padding.
      class_names: C names (``class_names[0]`` names class 1).
      every: steps between writes (0 = only at the end); always written after the last step.
      min_score: detections below this score are not drawn.
    """

    def __init__(
        self,
        writer,
        *,
        detect_fn: Callable,
        images,
        image_shapes,
        class_names: Sequence[str],
        every: int,
        min_score: float = 0.3,
    ):
        self.writer = writer
        self.detect_fn = detect_fn
        self.images = np.asarray(images)
        self.image_shapes = np.asarray(image_shapes)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [B, H, W, 3], got {self.images.dtype} {self.images.shape}"
            )
        self.class_names = list(class_names)
        self.every = int(every)
        self.min_score = float(min_score)
        self.last_written: int | None = None

    def render(self) -> np.ndarray:
        """uint8 [B, Hp, Wp, 3]: each image (cropped to its shape, re-padded) with its boxes."""
        from rfcn_tf.visualization import draw_boxes

        out = self.detect_fn(tf.constant(self.images), tf.constant(self.image_shapes, tf.int32))
        out = {k: np.asarray(v) for k, v in out.items()}
        drawn = np.zeros_like(self.images)
        for i, (height, width) in enumerate(self.image_shapes):
            n = int(out["num_detections"][i])
            scores = out["detection_scores"][i, :n]
            keep = scores >= self.min_score
            order = np.argsort(scores[keep])  # best label drawn last, on top
            image = self.images[i, :height, :width]
            drawn[i, :height, :width] = draw_boxes(
                image,
                out["detection_boxes"][i, :n][keep][order],
                classes=out["detection_classes"][i, :n][keep][order].astype(np.int64),
                class_names=self.class_names,
                scores=scores[keep][order],
            )
        return drawn

    def _write(self, step: int) -> None:
        drawn = self.render()
        with self.writer.as_default():
            write_images("val/detections", drawn, step)
        self.writer.flush()
        self.last_written = step

    def after_step(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> None:
        if self.every and step % self.every == 0:
            self._write(step)

    def on_train_end(self, loop: TrainLoop, logs: Mapping[str, float]) -> None:
        if self.last_written != loop.step and loop.step > loop.start_step:
            self._write(loop.step)


class ProgressHook(Hook):
    """A tqdm progress bar over the global steps with ETA, loss, learning rate and images/s.

    Args:
      total_steps: the run's last step (all stages); the bar starts at the loop's start step.
      disable: None = only when stderr is a terminal (tqdm's rule); True/False to force.
      desc: the bar's label.
    """

    def __init__(self, *, total_steps: int, disable: bool | None = None, desc: str = "train"):
        self.total_steps = int(total_steps)
        self.disable = disable
        self.desc = desc
        self.bar = None

    def on_train_begin(self, loop: TrainLoop) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total_steps,
            initial=loop.start_step,
            unit="step",
            desc=f"{self.desc} [{loop.name}]",
            dynamic_ncols=True,
            disable=self.disable,
            mininterval=0.5,
        )

    def after_step(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> None:
        if self.bar is None:
            return
        postfix = {
            "loss": f"{logs.get('total_loss', float('nan')):.4f}",
            "img/s": f"{logs['images_per_sec']:.1f}",
        }
        if "learning_rate" in logs:
            postfix["lr"] = f"{logs['learning_rate']:.2e}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, loop: TrainLoop, logs: Mapping[str, float]) -> None:
        self._close()

    def on_train_failed(self, loop: TrainLoop, error: BaseException) -> None:
        self._close()


class LoggingHook(Hook):
    """Logs one line every ``every`` steps: step, losses, lr, images/s, ETA (for non-TTY runs).

    Args:
      total_steps: the run's last step (for the ETA).
      every: steps between lines (also logged after the last step).
      log: the ``logging.Logger`` (default ``rfcn_tf.train``).
    """

    def __init__(self, *, total_steps: int, every: int, log: logging.Logger | None = None):
        if every < 1:
            raise ValueError(f"log interval must be >= 1 step, got {every}")
        self.total_steps = int(total_steps)
        self.every = int(every)
        self.log = log or logger
        self.throughput = _Throughput(window=max(every, 20))
        self.started = 0.0
        self.last_logged: int | None = None

    def on_train_begin(self, loop: TrainLoop) -> None:
        self.throughput.reset()
        self.started = time.perf_counter()

    def _line(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> str:
        losses = " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k.endswith("loss"))
        mean_time = self.throughput.mean_step_time() or logs["step_time"]
        eta = format_duration(mean_time * (self.total_steps - step))
        lr = f" lr={logs['learning_rate']:.3e}" if "learning_rate" in logs else ""
        return (
            f"step {step}/{self.total_steps} [{loop.name}] {losses}{lr} "
            f"images/s={logs['global_batch_size'] / mean_time:.2f} eta={eta}"
        )

    def after_step(self, loop: TrainLoop, step: int, logs: Mapping[str, float]) -> None:
        self.throughput.add(logs["step_time"])
        if step % self.every == 0:
            self.log.info(self._line(loop, step, logs))
            self.last_logged = step

    def on_train_end(self, loop: TrainLoop, logs: Mapping[str, float]) -> None:
        if logs and self.last_logged != loop.step:
            self.log.info(self._line(loop, loop.step, logs))
        self.log.info(
            "%s: %d steps in %s",
            loop.name,
            loop.step - loop.start_step,
            format_duration(time.perf_counter() - self.started),
        )
