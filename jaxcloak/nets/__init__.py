"""Network definitions and the face-recognition model registry."""

from .registry import MODELS, FaceModelSpec, FaceRecognizer, get_spec, load

__all__ = ["MODELS", "FaceModelSpec", "FaceRecognizer", "get_spec", "load"]
