"""Attack pipelines. Stage 1 of FaceCloak, varied views of one face, lives in :mod:`.views`."""

from .views import AugmentViews, ViewGenerator, make_view_generator

__all__ = ["AugmentViews", "ViewGenerator", "make_view_generator"]
