"""rfcn_tf.evaluation."""
