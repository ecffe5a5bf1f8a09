"""URIs for the Ray engine (``jaxcloak.io.locations``) and the units a URI job forms, without
Ray: listing, relative names, atomic uploads, and the same unit names as a local job."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxcloak.io.images import IMAGE_SUFFIXES, ImageReadError, decode_image
from jaxcloak.io.locations import (
    common_folder,
    is_uri,
    list_photos,
    put_file,
    read_bytes,
    relative,
)
from jaxcloak.pipelines.inputs import identity_units, uri_units

pytest.importorskip("fsspec")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ["ann/a.jpg", "ann/b.PNG", "bob/c.jpg", "bob/notes.txt", ".hidden/d.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    return tmp_path


def test_is_uri():
    assert is_uri("s3://bucket/x.jpg") and is_uri("file:///tmp/x")
    assert not is_uri("photos/x.jpg") and not is_uri(Path("/tmp")) and not is_uri("C:x")


def test_list_photos_finds_images_below_a_folder_uri(tree):
    found = list_photos(f"file://{tree}", IMAGE_SUFFIXES)
    assert found == [f"file://{tree}/{r}" for r in ["ann/a.jpg", "ann/b.PNG", "bob/c.jpg"]]
    assert list_photos(found[0], IMAGE_SUFFIXES) == [found[0]]
    with pytest.raises(FileNotFoundError, match="no such file"):
        list_photos(f"file://{tree}/missing", IMAGE_SUFFIXES)
    assert read_bytes(found[2]) == b"bob/c.jpg"


def test_common_folder_and_relative(tree):
    uris = [f"file://{tree}/ann/a.jpg", f"file://{tree}/bob/c.jpg"]
    assert common_folder(uris) == f"file://{tree}"
    assert relative(uris[1], common_folder(uris)) == "bob/c.jpg"
    with pytest.raises(ValueError, match="mix URI schemes"):
        common_folder(["s3://b/x.jpg", "gs://b/y.jpg"])


@pytest.mark.parametrize("mode", ["single", "per-folder", "per-file"])
def test_uri_units_name_units_as_a_local_job_does(tree, mode):
    files = [tree / "ann/a.jpg", tree / "ann/b.PNG", tree / "bob/c.jpg"]
    local = identity_units(files, mode, tree)
    remote = uri_units([f"file://{f}" for f in files], mode, f"file://{tree}")
    assert [n for n, _ in remote] == [n for n, _ in local]
    assert [[f"file://{f}" for f in fs] for _, fs in local] == [fs for _, fs in remote]


def test_uri_units_from_a_csv(tree, tmp_path):
    uris = [f"file://{tree}/ann/a.jpg", f"file://{tree}/bob/c.jpg"]
    table = tmp_path / "who.csv"
    table.write_text(f"path,identity\n{uris[0]},Ann\n{uris[1]},Ann\n")
    assert uri_units(uris, str(table), f"file://{tree}") == [("Ann", uris)]
    table.write_text(f"{uris[0]},Ann\n")
    with pytest.raises(ValueError, match="no identity for"):
        uri_units(uris, str(table), f"file://{tree}")


def test_put_file_lands_whole_without_temporaries(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    put_file(src, f"file://{tmp_path}/out/deep/y.bin")
    assert (tmp_path / "out/deep/y.bin").read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "out/deep").iterdir()] == ["y.bin"]


def test_decode_image_names_the_uri():
    with pytest.raises(ImageReadError, match=r"^s3://b/x\.jpg: not a recognised image"):
        decode_image(b"nope", "s3://b/x.jpg")
    with pytest.raises(ImageReadError, match="file is empty"):
        decode_image(b"", "s3://b/x.jpg")


def test_collect_uris_reports_missing_and_leaves_out_the_destination(tree):
    from jaxcloak.pipelines.inputs import collect_uris

    base = f"file://{tree}"
    found, errors = collect_uris([base, f"{base}/nope"], exclude=f"{base}/bob")
    assert found == [f"{base}/ann/a.jpg", f"{base}/ann/b.PNG"]
    assert [u for u, _ in errors] == [f"{base}/nope"] and "no such file" in errors[0][1]


def test_remote_claim_refuses_foreign_objects_and_keeps_a_ledger(tmp_path):
    from jaxcloak.pipelines.outputs import OutputConflict
    from jaxcloak.pipelines.ray_engine import _claim_remote

    dest, state = tmp_path / "dest", tmp_path / "state"
    dest.mkdir()
    state.mkdir()
    outs = [f"file://{dest}/a.png", f"file://{dest}/b.png"]
    (dest / "b.png").write_bytes(b"someone else's")
    with pytest.raises(OutputConflict, match=r"b\.png, not written by jaxcloak"):
        _claim_remote(f"file://{dest}", outs, state)
    assert not (dest / ".jaxcloak-outputs").exists()  # nothing written
    (dest / "b.png").unlink()
    _claim_remote(f"file://{dest}", outs, state)
    assert (dest / ".jaxcloak-outputs").read_text().splitlines() == outs
    (dest / "b.png").write_bytes(b"ours, from a killed run")
    _claim_remote(f"file://{dest}", outs, state)  # listed in the ledger: ours to replace


def test_ray_plan_refuses_an_output_onto_an_input(tmp_path):
    from jaxcloak.pipelines.outputs import OutputConflict
    from jaxcloak.pipelines.ray_engine import _plan

    (tmp_path / "x.png").write_bytes(b"x")
    uris = [f"file://{tmp_path}/x.png"]
    with pytest.raises(OutputConflict, match="both an input and an output"):
        _plan(uris, f"file://{tmp_path}", "per-file", None, None)
    units, n = _plan(uris, f"file://{tmp_path}/out", "per-file", None, None)
    assert n == 1 and units[0][1][0].out == f"file://{tmp_path}/out/x.png"
