"""rfcn_tf.model."""
