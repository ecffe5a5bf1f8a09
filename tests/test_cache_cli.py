"""The converted-model cache and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from jaxcloak.cli.main import main
from jaxcloak.convert.cache import entry_path, load_onnx_cached


def _tiny_model(path, scale: float) -> None:
    w = numpy_helper.from_array(np.full((1,), scale, np.float32), "w")
    node = helper.make_node("Mul", ["x", "w"], ["y"], name="mul")
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        initializer=[w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_cache_hits_then_invalidates_on_changed_source(tmp_path):
    src = tmp_path / "m.onnx"
    _tiny_model(src, 2.0)
    x = np.ones((1, 2), np.float32)
    fn, params, sha, hit = load_onnx_cached(src, name="tiny")
    assert not hit and entry_path("tiny", sha).is_file()
    fn2, params2, sha2, hit2 = load_onnx_cached(src, name="tiny")
    assert hit2 and sha2 == sha
    np.testing.assert_array_equal(np.asarray(fn2(params2, x)[0]), np.asarray(fn(params, x)[0]))
    _tiny_model(src, 3.0)  # same name, new content: the stale entry must not be used
    fn3, params3, sha3, hit3 = load_onnx_cached(src, name="tiny")
    assert not hit3 and sha3 != sha
    np.testing.assert_array_equal(np.asarray(fn3(params3, x)[0]), 3 * x)


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    src = tmp_path / "m.onnx"
    _tiny_model(src, 2.0)
    _, _, sha, _ = load_onnx_cached(src, name="tiny2")
    entry_path("tiny2", sha).write_bytes(b"garbage")
    fn, params, _, hit = load_onnx_cached(src, name="tiny2")
    assert not hit
    np.testing.assert_array_equal(np.asarray(fn(params, np.ones((1, 2), np.float32))[0]), 2.0)


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        load_onnx_cached(tmp_path / "nope.onnx", name="x")


def test_cli_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "jaxcloak", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("jaxcloak ")
    out = subprocess.run(
        [sys.executable, "-m", "jaxcloak", "--help"], capture_output=True, text=True, check=True
    )
    assert "models" in out.stdout


def test_cli_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "sface" in out and "112x112 BGR" in out and "MISSING" not in out


def test_cli_models_check_writes_report(tmp_path, capsys):
    report = tmp_path / "models.json"
    assert main(["models", "check", "--json", str(report)]) == 0
    assert "sface" in capsys.readouterr().out
    rows = json.loads(report.read_text())["models"]
    assert rows[0]["model"] == "sface" and rows[0]["status"] == "ok"
    assert float(rows[0]["min_cosine"]) >= 0.99999
