"""rfcn_tf.engine: distributed training of the detector.

- ``strategy.build_strategy(name)``: ``default`` | ``mirrored`` | ``multi_worker`` (TF_CONFIG).
- ``optimizer.build_lr_schedule(...)``, ``optimizer.build_optimizer(...)``: SGD + momentum with
  Caffe-style L2 weight decay (not on biases/BatchNorm), warmup + step/cosine, global-norm
  clipping after the cross-replica sum, optional loss scaling (mixed_float16).
- ``train_step.build_train_step(model, optimizer, strategy, *, variables, include)``: the
  ``tf.function`` step (data -> losses -> gradient step).
- ``loop.TrainLoop`` + ``loop.Hook``: the host loop with the NaN guard; ``callbacks``:
  checkpoints, TensorBoard scalars and images, progress bar, log lines.
- ``schemes.build_stages(scheme, ...)``, ``schemes.run_training(...)``: joint or 4-step
  alternating training, resumable from ``checkpoints`` (``checkpoints.restore_model_weights``).
- ``features.resolve_schedule(cfg)`` (schedules in epochs, ``epochs.py``) and
  ``features.TrainingFeatures``: what a run assembles from the ``train.*`` options --
  validation during training with the best checkpoint and early stop (``validation.py``,
  ``best_checkpoint.py``: ``checkpoints/best/`` + ``best.json``), weight EMA (``ema.py``),
  synchronized BatchNorm (``sync_batchnorm.py``), exact data resume (``data_resume.py``).
"""
