"""A terminal progress bar for long loops (hidden when the output is not a terminal)."""

from __future__ import annotations


def progress_bar(it, desc: str, total: int):
    """``it`` wrapped in a tqdm bar that leaves no line behind."""
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="it", disable=None, leave=False)
