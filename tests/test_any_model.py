"""Models made by scikit-learn + skl2onnx and PyTorch's exporter, served over the native API.

Expected outputs come from the original framework (tests/fixtures/models/cases.json), not
from ONNX Runtime. Every model runs in its own real `bentoml serve`.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from fixture_models import CASES, MODELS, assert_output, expected, model_name

JSON = {"Content-Type": "application/json"}


def post_json(url: str, route: str, body: object) -> httpx.Response:
    # json.dumps, not httpx's json=: NaN is a valid input for some models.
    return httpx.post(url + route, content=json.dumps(body), headers=JSON, timeout=30)


def native_body(case: str) -> dict:
    inputs = CASES[case]["inputs"]
    return {"x": next(iter(inputs.values()))} if len(inputs) == 1 else {"inputs": inputs}


def check_native(case: str, answer: dict) -> None:
    outputs = CASES[case]["outputs"]
    if len(outputs) == 1:
        assert set(answer) >= {"y", "model"}
        assert_output(answer["y"], case, next(iter(outputs)))
    else:
        assert set(answer["outputs"]) == set(outputs)
        for name in outputs:
            assert_output(answer["outputs"][name], case, name)
    assert answer["model"].startswith(model_name(case) + ":")
    assert answer.get("classes") == CASES[case].get("classes", answer.get("classes"))


@pytest.mark.parametrize("case", list(CASES))
def test_native_json(fixture_servers: dict[str, str], case: str) -> None:
    r = post_json(fixture_servers[case], "/predict", native_body(case))
    assert r.status_code == 200, r.text
    check_native(case, r.json())


@pytest.mark.parametrize("case", list(CASES))
def test_batched_where_batching_is_possible(fixture_servers: dict[str, str], case: str) -> None:
    url = fixture_servers[case]
    batch = httpx.get(url + "/metadata").json()["signature"]["batch"]
    r = post_json(url, "/predict_batched", native_body(case))
    if batch == "dynamic":
        assert r.status_code == 200, r.text
        check_native(case, r.json())
    else:
        assert r.status_code == 400
        assert "adaptive batching does not apply to this model" in r.text


def test_classifier_results_are_labels_and_probabilities(fixture_servers: dict[str, str]) -> None:
    """skl2onnx's ZipMap ({class: probability} per row) and zipmap=False answer alike."""
    answers = [
        post_json(fixture_servers[c], "/predict", native_body(c)).json()
        for c in ("sklearn_logreg_zipmap", "sklearn_logreg")
    ]
    assert answers[0]["classes"] == answers[1]["classes"] == [0, 1, 2]
    a, b = (list(x["outputs"].values()) for x in answers)
    assert a[0] == b[0]  # labels
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)  # probabilities, columns in class order


def test_static_batch_model_runs_larger_requests_in_slices(fixture_servers: dict[str, str]) -> None:
    url = fixture_servers["torch_mlp_static"]
    meta = httpx.get(url + "/metadata").json()["signature"]
    assert (meta["batch"], meta["batch_size"]) == ("static", 1)
    assert "exactly 1 row(s) per call" in meta["batching"]
    x = CASES["torch_mlp_static"]["inputs"]["input"]
    r = post_json(url, "/predict", {"x": x * 3})  # 15 rows through a [1, 4] model
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        r.json()["y"], np.tile(expected("torch_mlp_static", "linear_1"), (3, 1)), atol=1e-5
    )


def test_image_model_classifies_an_uploaded_jpeg(fixture_servers: dict[str, str]) -> None:
    url = fixture_servers["torch_cnn"]
    image = CASES["torch_cnn"]["image"]
    jpeg = (MODELS / image["file"]).read_bytes()
    r = httpx.post(url + "/predict_image?top_k=3", files={"file": ("g.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    top = r.json()["top"]
    assert top[0]["label"] == image["top"] == "green"
    by_label = {t["label"]: t["probability"] for t in top}
    want = dict(zip(["red", "green", "blue"], image["probabilities"], strict=True))
    for label, p in want.items():
        assert by_label[label] == pytest.approx(p, abs=1e-3)
    assert sum(by_label.values()) == pytest.approx(1.0)
    meta = httpx.get(url + "/metadata").json()["signature"]["image"]
    assert (meta["layout"], meta["height"], meta["width"]) == ("NCHW", 32, 32)


# --- files: CSV columns by the documented rule, and .npy / .npz -------------------------------


def post_file(url: str, name: str, content: bytes) -> httpx.Response:
    files = {"file": (name, content, "application/octet-stream")}
    return httpx.post(url + "/predict_file", files=files, timeout=60)


def csv_of(columns: list[str], rows: list[list]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", *columns])
    writer.writerows([i, *row] for i, row in enumerate(rows))
    return out.getvalue().encode()


def test_csv_with_the_feature_names_given_at_import(fixture_servers: dict[str, str]) -> None:
    x = CASES["sklearn_linear"]["inputs"]["X"]
    r = post_file(fixture_servers["sklearn_linear"], "in.csv", csv_of(["a", "b", "c"], x))
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["id", "a", "b", "c", "y"]
    assert_output([float(row["y"]) for row in rows], "sklearn_linear", "variable")


def test_csv_of_a_classifier_names_columns_after_outputs_and_classes(
    fixture_servers: dict[str, str],
) -> None:
    x = CASES["sklearn_logreg_zipmap"]["inputs"]["X"]
    r = post_file(
        fixture_servers["sklearn_logreg_zipmap"], "in.csv", csv_of(["x_0", "x_1", "x_2", "x_3"], x)
    )
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    probs = ["output_probability_0", "output_probability_1", "output_probability_2"]
    assert list(rows[0])[-4:] == ["output_label", *probs]
    assert_output(
        [int(row["output_label"]) for row in rows], "sklearn_logreg_zipmap", "output_label"
    )
    got = [[float(row[p]) for p in probs] for row in rows]
    assert_output(got, "sklearn_logreg_zipmap", "output_probability")


def test_csv_of_two_inputs_and_of_strings(fixture_servers: dict[str, str]) -> None:
    a, b = (CASES["torch_two_inputs"]["inputs"][k] for k in "ab")
    columns = [f"{k}_{i}" for k in "ab" for i in range(3)]
    r = post_file(
        fixture_servers["torch_two_inputs"],
        "in.csv",
        csv_of(columns, [ra + rb for ra, rb in zip(a, b, strict=True)]),
    )
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert_output([[float(row["y_0"]), float(row["y_1"])] for row in rows], "torch_two_inputs", "y")

    cities = CASES["sklearn_strings"]["inputs"]["city"]
    r = post_file(fixture_servers["sklearn_strings"], "in.csv", csv_of(["x"], cities))
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["x"] for row in rows] == [c[0] for c in cities]
    assert_output([int(row["output_label"]) for row in rows], "sklearn_strings", "output_label")


def test_npy_of_token_ids_and_npz_of_several_outputs(fixture_servers: dict[str, str]) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array(CASES["torch_embedding"]["inputs"]["token_ids"], dtype=np.int64))
    r = post_file(fixture_servers["torch_embedding"], "ids.npy", buf.getvalue())
    assert r.status_code == 200, r.text
    assert_output(np.load(io.BytesIO(r.content)), "torch_embedding", "scores")

    buf = io.BytesIO()
    np.save(buf, np.array(CASES["sklearn_logreg"]["inputs"]["X"], dtype=np.float32))
    r = post_file(fixture_servers["sklearn_logreg"], "x.npy", buf.getvalue())
    assert r.status_code == 200, r.text
    assert zipfile.is_zipfile(io.BytesIO(r.content))
    with np.load(io.BytesIO(r.content)) as npz:
        assert sorted(npz.files) == ["label", "probabilities"]
        for name in npz.files:
            assert_output(npz[name], "sklearn_logreg", name)


# --- bad input for the new models: a 4xx that says why, never a 5xx ----------------------------

BAD = [
    ("all_types", {"in_int8": [[300, 1], [0, 0]]}, "300 is out of range for int8"),
    ("all_types", {"in_uint8": [[-1, 1], [0, 0]]}, "-1 is out of range for uint8"),
    ("all_types", {"in_bool": [[1, 0], [0, 1]]}, "valid boolean"),
    ("all_types", {"in_string": [[5, "a"], ["b", "c"]]}, "valid string"),
    ("all_types", {"in_float16": [[70000.0, 1], [0, 0]]}, "is not a finite float16"),
    ("all_types", {"in_int64": [[1.5, 1], [0, 0]]}, "valid integer"),
    ("torch_two_inputs", {"b": [[1.0, 2.0, 3.0]]}, "every input needs the same number of rows"),
    ("torch_two_inputs", {"b": None}, "Field required"),
    ("torch_two_inputs", {"c": [[1.0]]}, "Extra inputs are not permitted"),
    ("torch_two_inputs", {"a": [[1.0, 2.0]] * 4}, "takes 3 feature(s) per row, got 2"),
    ("torch_embedding", {"token_ids": [[1, 2, 3, 4, 5]]}, "takes 6 feature(s) per row, got 5"),
    ("torch_embedding", {"token_ids": [[1, 2, 3, 4, 5, "6"]]}, "valid integer"),
    ("torch_cnn", {"input": np.zeros((1, 3, 16, 16)).tolist()}, "dimension 2 must be 32"),
    ("torch_cnn", {"input": [[1.0, 2.0]]}, "list"),
    ("sklearn_linear", {"X": [[float("nan"), 1.0, 2.0]]}, "is not a finite float32"),
    ("torch_float16", {"x16": [[1.0, 2.0, 3.0, 4.0]] * 2 + [[1.0]]}, "ragged rows"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD)
def test_bad_input_gets_400_with_reason(
    fixture_servers: dict[str, str], case: str, change: dict, message: str
) -> None:
    inputs = {**CASES[case]["inputs"], **change}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    body = (
        {"inputs": inputs} if len(CASES[case]["inputs"]) > 1 else {"x": next(iter(inputs.values()))}
    )
    r = post_json(fixture_servers[case], "/predict", body)
    assert r.status_code == 400, r.text
    assert message in r.text


def test_nan_is_an_input_where_the_model_was_imported_with_allow_nan(
    fixture_servers: dict[str, str],
) -> None:
    url = fixture_servers["sklearn_tree_nan"]
    assert httpx.get(url + "/metadata").json()["signature"]["allow_nan"] is True
    r = post_json(url, "/predict", {"x": [[float("nan"), 1.0]]})
    assert r.status_code == 200 and r.json()["y"] == [100.0]
    assert "not a finite" in post_json(url, "/predict", {"x": [[float("inf"), 1.0]]}).text


@pytest.mark.parametrize(
    ("case", "route", "content", "message"),
    [
        ("torch_cnn", "/predict_image", b"not a picture", "not a readable PNG or JPEG"),
        ("sklearn_linear", "/predict_image", b"\x89PNG", "this model takes no image"),
        ("torch_two_inputs", "/predict_file", b"a_0,a_1\n1,2\n", "has no ['a_2', 'b_0'"),
        ("torch_cnn", "/predict_file", b"x\n1\n", "CSV columns can't feed this model"),
        ("torch_two_inputs", "/predict_binary", b"\0\0\0\0", "serves models of one input"),
    ],
)
def test_bad_uploads_get_400_with_reason(
    fixture_servers: dict[str, str], case: str, route: str, content: bytes, message: str
) -> None:
    url = fixture_servers[case]
    if route == "/predict_binary":
        headers = {"Content-Type": "application/octet-stream"}
        r = httpx.post(url + route, content=content, headers=headers)
    else:
        r = httpx.post(url + route, files={"file": ("f", content, "application/octet-stream")})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


@pytest.mark.parametrize("shape", ["own-name", "inputs-form", "x"])
def test_a_single_input_is_taken_by_its_own_name(
    fixture_servers: dict[str, str], shape: str
) -> None:
    """The iris-style model's input is named `X`: `{"X": ...}` and `{"inputs": {"X": ...}}`
    work as `{"x": ...}` does (`x` stays the documented name)."""
    rows = CASES["sklearn_linear"]["inputs"]["X"]
    body = {"own-name": {"X": rows}, "inputs-form": {"inputs": {"X": rows}}, "x": {"x": rows}}
    r = httpx.post(f"{fixture_servers['sklearn_linear']}/predict", json=body[shape])
    assert r.status_code == 200, r.text
    assert_output(r.json()["y"], "sklearn_linear", "variable")
