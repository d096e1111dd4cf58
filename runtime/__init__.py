"""Running compiled models with ONNX Runtime (never needs onnx-graphsurgeon)."""
