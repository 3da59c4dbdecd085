"""rfcn_tf.ops."""
