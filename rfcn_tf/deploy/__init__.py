"""Deployment beyond TF Serving: TF-TRT conversion (``tensorrt``) and ONNX export (``onnx_export``)."""
