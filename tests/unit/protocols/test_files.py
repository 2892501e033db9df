"""Files (protocols/files.py): CSV and .npy in chunks, their columns, what is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from demo_model import DEMO, double

from onnx_serving.model.tensors import InvalidInput
from onnx_serving.protocols.files import predict_file


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_csv_keeps_columns_and_order_across_chunks(tmp_path: Path) -> None:
    rows = [f"id{i},{i * 0.5},tag{i}" for i in range(10)]
    src = write(tmp_path, "in.csv", ("id,x,note\n" + "\n".join(rows) + "\n").encode())
    out, _ = predict_file(src, tmp_path, DEMO, double, chunk_rows=3)
    lines = out.read_text().splitlines()
    assert lines[0] == "id,x,note,y"
    assert lines[1:] == [f"{r},{i:g}" for i, r in enumerate(rows)]


def test_csv_predictions_read_back_as_the_same_float32(tmp_path: Path) -> None:
    x = np.random.default_rng(3).uniform(-1e6, 1e6, size=2000).astype(np.float32)
    src = write(tmp_path, "in.csv", ("x\n" + "\n".join(map(repr, x.tolist())) + "\n").encode())
    out, _ = predict_file(src, tmp_path, DEMO, double, chunk_rows=500)
    y = np.array([float(line.split(",")[1]) for line in out.read_text().splitlines()[1:]])
    np.testing.assert_array_equal(y.astype(np.float32), 2 * x)


def test_csv_with_quotes_crlf_bom_and_blank_lines(tmp_path: Path) -> None:
    content = '\ufeffname,x\r\n"Smith, J",1.5\r\n\r\n"O""Neil",2\r\n'.encode()
    out, _ = predict_file(write(tmp_path, "q.csv", content), tmp_path, DEMO, double, chunk_rows=2)
    assert out.read_text().splitlines() == ["name,x,y", '"Smith, J",1.5,3', '"O""Neil",2,4']


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"a,b\n1,2\n", "no \\['x'\\] column"),
        (b"x\n1\nabc\n3\n", "line 3: x = 'abc' is not a number"),
        (b"x\n1\nnan\n", "not a finite float32"),
        (b"x\n1e39\n", "not a finite float32"),
        (b"x\n", "no rows"),
        (b"id,x\n1\n", "has 1 fields, the header has 2"),
        (b"x,y\n1,2\n", "already has the output column\\(s\\) \\['y'\\]"),
        (b"\xff\xfe\x00garbage", "neither a .npy file nor UTF-8"),
    ],
)
def test_bad_csv_is_refused_with_a_reason(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        predict_file(write(tmp_path, "bad.csv", content), tmp_path, DEMO, double, chunk_rows=2)


@pytest.mark.parametrize("shape", [(7,), (7, 1)])
def test_npy_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    x = np.arange(7, dtype=np.float64).reshape(shape) / 4
    src = tmp_path / "in.npy"
    np.save(src, x)
    out, _ = predict_file(src, tmp_path, DEMO, double, chunk_rows=3)
    y = np.load(out)
    assert y.dtype == np.float32 and y.shape == (7,)
    np.testing.assert_array_equal(y, 2 * x.reshape(-1).astype(np.float32))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([1, 2, 3], dtype=np.int64), "must hold floats"),
        (np.zeros((0,), dtype=np.float32), "no rows"),
        (np.zeros((2, 2, 2), dtype=np.float32), "has 3 dimension\\(s\\)"),
        (np.zeros((2, 2), dtype=np.float32), "takes 1 feature\\(s\\) per row, got 2"),
        (np.array([1.0, np.inf], dtype=np.float32), "row\\[1\\] = inf"),
    ],
)
def test_bad_npy_is_refused(tmp_path: Path, array: np.ndarray, message: str) -> None:
    src = tmp_path / "in.npy"
    np.save(src, array)
    with pytest.raises(InvalidInput, match=message):
        predict_file(src, tmp_path, DEMO, double, chunk_rows=3)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in.npy"
    np.save(src, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match=r"not a readable \.npy file"):
        predict_file(src, tmp_path, DEMO, double, chunk_rows=3)
