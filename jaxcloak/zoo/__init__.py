"""The model zoo: which face models exist, where their weights come from, how they load."""

from .registry import MODELS, FaceModelSpec, FaceRecognizer, get_spec, load

__all__ = ["MODELS", "FaceModelSpec", "FaceRecognizer", "get_spec", "load"]
