"""rfcn_tf.engine."""
