"""The one folder walk (jaxcloak.io.folders) and the identity-from-path rule."""

from __future__ import annotations

import os
from pathlib import Path

from jaxcloak.io.folders import identity_from_path, scan_folder


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_scan_folder_finds_images_and_says_what_it_passed_over(tmp_path):
    for rel in ["b.JPG", "a/z.png", "a/c/d.webp", "notes.txt", "masks/m.png", "out/o.png"]:
        _touch(tmp_path / rel)
    _touch(tmp_path / ".hidden.png")
    _touch(tmp_path / ".cache" / "h.png")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    os.symlink(tmp_path / "a", tmp_path / "linked-folder")  # never followed
    os.mkfifo(tmp_path / "pipe.png")

    scan = scan_folder(tmp_path)
    rel = [f.relative_to(tmp_path).as_posix() for f in scan.images]
    assert rel == ["a/c/d.webp", "a/z.png", "b.JPG", "masks/m.png", "out/o.png"]  # sorted paths
    why = {s.path.name: s.why for s in scan.skipped}
    assert why == {"notes.txt": "suffix", "link.jpg": "broken-link", "pipe.png": "not-regular"}

    out = tmp_path / "out"
    scan = scan_folder(tmp_path, hidden_files=True, skip_folders={"masks"}, exclude=out)
    rel = [f.relative_to(tmp_path).as_posix() for f in scan.images]
    assert rel == [".hidden.png", "a/c/d.webp", "a/z.png", "b.JPG"]  # hidden folders still left out


def test_scan_folder_reports_a_missing_folder(tmp_path):
    scan = scan_folder(tmp_path / "missing")
    assert scan.images == [] and [s.why for s in scan.skipped] == ["unreadable"]
    assert isinstance(scan.skipped[0].error, FileNotFoundError)


def test_identity_from_path():
    assert identity_from_path(Path("alice/holiday_2.jpg")) == "alice"
    assert identity_from_path(Path("alice/x/y.jpg")) == "alice"
    assert identity_from_path(Path("bob_01.jpg")) == "bob"
    assert identity_from_path(Path("carol.png")) == "carol"
