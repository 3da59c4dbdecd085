"""rfcn_tf.data."""
