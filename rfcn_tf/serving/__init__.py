"""rfcn_tf.serving."""
