"""jaxcloak.io.atomic: all-or-nothing writes that never clobber by accident."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from jaxcloak.io import atomic_write, atomic_write_json, atomic_write_text


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _perm(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_writes_bytes_and_writer_output(tmp_path: Path) -> None:
    assert atomic_write(tmp_path / "a.bin", b"abc") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    atomic_write(str(tmp_path / "b.bin"), bytearray(b"xy"))
    atomic_write(tmp_path / "c.bin", memoryview(b"z"))

    def writer(f: IO[bytes]) -> None:
        for i in range(3):
            f.write(bytes([i]) * 1000)

    atomic_write(tmp_path / "d.bin", writer)
    assert (tmp_path / "d.bin").read_bytes() == b"\0" * 1000 + b"\1" * 1000 + b"\2" * 1000
    assert _names(tmp_path) == ["a.bin", "b.bin", "c.bin", "d.bin"]  # no temp files left


def test_bare_file_name_writes_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic_write("bare.txt", b"1")
    assert (tmp_path / "bare.txt").read_bytes() == b"1"


def test_overwrite_replaces_by_default(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    atomic_write(target, b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["t.txt"]


def test_no_clobber(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_bytes(b"original")
    calls = []
    with pytest.raises(FileExistsError, match=r"t\.txt.*overwrite=True"):
        atomic_write(target, calls.append, overwrite=False)
    assert calls == []  # refused before the (possibly expensive) writer ran
    assert target.read_bytes() == b"original"
    assert _names(tmp_path) == ["t.txt"]
    # A new name is fine.
    atomic_write(tmp_path / "new.txt", b"x", overwrite=False)
    assert (tmp_path / "new.txt").read_bytes() == b"x"


def test_no_clobber_when_target_appears_during_the_write(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"

    def racing_writer(f: IO[bytes]) -> None:
        f.write(b"ours")
        target.write_bytes(b"theirs")  # another process creates the target meanwhile

    with pytest.raises(FileExistsError):
        atomic_write(target, racing_writer, overwrite=False)
    assert target.read_bytes() == b"theirs"
    assert _names(tmp_path) == ["t.txt"]


def test_no_clobber_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        atomic_write(link, b"x", overwrite=False)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_no_clobber_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError("hard links not supported (simulated)")

    monkeypatch.setattr(os, "link", no_links)
    atomic_write(tmp_path / "a.txt", b"a", overwrite=False)
    assert (tmp_path / "a.txt").read_bytes() == b"a"
    assert _names(tmp_path) == ["a.txt"]


def test_new_file_permissions_respect_umask(tmp_path: Path, umask_027: None) -> None:
    atomic_write(tmp_path / "a", b"x")
    atomic_write(tmp_path / "b", b"x", overwrite=False)
    assert _perm(tmp_path / "a") == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600
    assert _perm(tmp_path / "b") == 0o640


def test_replacing_keeps_permissions_and_mode_overrides(tmp_path: Path, umask_027: None) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"old")
    target.chmod(0o604)
    atomic_write(target, b"new")
    assert _perm(target) == 0o604  # like open(path, "w") on an existing file
    atomic_write(target, b"newer", mode=0o600)
    assert _perm(target) == 0o600
    atomic_write(tmp_path / "n", b"x", mode=0o644)
    assert _perm(tmp_path / "n") == 0o644  # explicit mode is not masked by the umask
    with pytest.raises(ValueError, match="mode"):
        atomic_write(tmp_path / "bad", b"x", mode=0o10000)


def test_temp_file_removed_when_writer_raises(tmp_path: Path) -> None:
    def failing(f: IO[bytes]) -> None:
        f.write(b"partial")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "new.bin", failing)
    assert _names(tmp_path) == []

    # KeyboardInterrupt (not an Exception) must clean up too.
    def interrupted(f: IO[bytes]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.bin", interrupted, overwrite=False)
    assert _names(tmp_path) == []


def test_target_untouched_when_writer_raises_midway_on_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "t.bin"
    target.write_bytes(b"good data")
    target.chmod(0o640)
    before = target.stat()

    def failing(f: IO[bytes]) -> None:
        f.write(b"half of the new")
        f.flush()
        raise RuntimeError("encoder crashed (simulated)")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        atomic_write(target, failing, overwrite=True)
    after = target.stat()
    assert target.read_bytes() == b"good data"
    assert (after.st_ino, after.st_mtime_ns, _perm(target)) == (
        before.st_ino,
        before.st_mtime_ns,
        0o640,
    )
    assert _names(tmp_path) == ["t.bin"]


def test_missing_directory_and_bad_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "such" / "dir.bin", b"x")
    with pytest.raises(TypeError, match="atomic_write_text"):
        atomic_write(tmp_path / "s.txt", "a str")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        atomic_write(tmp_path / "i.txt", 3)  # type: ignore[arg-type]
    assert _names(tmp_path) == []


def test_text(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    atomic_write_text(target, "héllo\nwörld\r\n")
    assert target.read_bytes() == "héllo\nwörld\r\n".encode()  # UTF-8, no newline translation
    atomic_write_text(target, "é", encoding="latin-1")
    assert target.read_bytes() == b"\xe9"
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "x", overwrite=False)
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "€", encoding="latin-1")
    assert target.read_bytes() == b"\xe9"


def test_json_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    obj = {
        "zeta": 1,
        "alpha": [1.5, None, True, "ünïcode"],
        "nested": {"b": 2, "a": {"path": "photos/IMG_0001.jpg"}},
        "empty": [],
    }
    assert atomic_write_json(target, obj) == target
    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == obj
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.startswith('{\n  "zeta": 1,\n  "alpha"')  # indent=2, insertion order kept
    assert list(json.loads(text)) == ["zeta", "alpha", "nested", "empty"]

    atomic_write_json(target, obj, sort_keys=True, indent=None)
    text = target.read_text(encoding="utf-8")
    assert list(json.loads(text)) == ["alpha", "empty", "nested", "zeta"]
    assert text.count("\n") == 1


def test_json_errors_leave_the_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"nan": float("nan")})  # not valid JSON for other readers
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _names(tmp_path) == ["m.json"]


def test_a_name_near_the_length_limit_can_still_be_written_atomically(tmp_path):
    from jaxcloak.io.atomic import atomic_write

    target = tmp_path / ("n" * 250 + ".png")  # 254 bytes: the old temp name was over 255
    atomic_write(target, b"ok")
    assert target.read_bytes() == b"ok"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left
