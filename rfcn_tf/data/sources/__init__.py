"""rfcn_tf.data.sources."""
