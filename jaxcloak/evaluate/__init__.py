"""Evaluation: protection success under several conventions, black-box transfer, image quality,
robustness, and the report."""
