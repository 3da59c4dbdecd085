"""rfcn_tf: R-FCN (Dai et al., NIPS 2016) object detection for TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
