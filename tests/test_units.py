"""Validation rules, signatures and chunked file processing, without a server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import train_and_save
from onnx_serving._patches.bentoml_container import FeedsContainer
from onnx_serving.model import store as model_store
from onnx_serving.model.feeds import BatchPredictions, Feeds
from onnx_serving.model.import_options import ImportOptions
from onnx_serving.model.signature import Signature
from onnx_serving.model.tensors import InvalidInput
from onnx_serving.protocols.files import predict_file
from onnx_serving.protocols.native import request_model, responder, response_model

# The demo model's signature, read from the file train_and_save.py exports.
DEMO = model_store.inspect(train_and_save.build_onnx(2.0, None), ImportOptions())
PredictRequest = request_model(DEMO, max_values=1_000_000)
PredictResponse = response_model(DEMO)


def double(feeds: Feeds) -> dict[str, np.ndarray]:
    return {"y": (2 * feeds.arrays["x"]).astype(np.float32)}


def x_of(body: str, model: type = PredictRequest) -> np.ndarray:
    return model.model_validate_json(body).feeds.arrays["x"]


@pytest.mark.parametrize(
    ("body", "shape"),
    [('{"x": [1, 2.5, -3]}', (3, 1)), ('{"x": [[1], [3], [5]]}', (3, 1))],
)
def test_valid_requests_become_float32_arrays(body: str, shape: tuple[int, int]) -> None:
    x = x_of(body)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == shape


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"x": ["1.5"]}', "valid number"),
        ('{"x": [true]}', "valid number"),
        ('{"x": [null]}', "valid number"),
        ('{"x": [{"a": 1}]}', "valid number"),
        ('{"x": [[1], [2, 3]]}', "ragged rows: x[0] has 1 value(s) but x[1] has 2 value(s)"),
        ('{"x": [1, [2]]}', "valid number"),
        ('{"x": [NaN]}', "not a finite float32"),
        ('{"x": [1, Infinity]}', "x[1] = inf"),
        ('{"x": [-Infinity]}', "not a finite float32"),
        ('{"x": [1e39]}', "not a finite float32"),
        ('{"x": [1e400]}', "not a finite float32"),
        ('{"x": []}', "x is empty"),
        ('{"x": [[]]}', "empty row"),
        ("{}", "Field required"),
        ('{"x": [1], "extra": 2}', "Extra inputs"),
        ('{"x": [1, 2', "Invalid JSON"),
        ('{"x": 5}', "valid array"),
        ('{"x": [[1, 2]]}', "the model takes 1 feature(s) per row, got 2"),
    ],
)
def test_bad_requests_say_what_is_wrong(body: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PredictRequest.model_validate_json(body)
    assert message in str(info.value)


def test_value_limit() -> None:
    ten = request_model(DEMO, max_values=10)
    x_of('{"x": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}', ten)
    with pytest.raises(ValidationError, match="too many values: 11 > MAX_VALUES=10"):
        x_of('{"x": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}', ten)


def test_batched_request_must_fit_one_batch() -> None:
    batched = request_model(DEMO, 1_000, max_rows=3, max_rows_setting="BATCH_MAX_SIZE")
    assert x_of('{"x": [1, 2, 3]}', batched).shape == (3, 1)
    with pytest.raises(ValidationError, match="too many rows for adaptive batching: 4 > BATCH_MAX"):
        x_of('{"x": [1, 2, 3, 4]}', batched)


def test_batched_requests_stack_and_each_gets_its_rows() -> None:
    # BentoML stacks the requests of a batch with the container registered for Feeds...
    parts = [Feeds({"x": np.full((n, 1), n, np.float32)}) for n in (1, 3, 2)]
    batch, indices = FeedsContainer.batches_to_batch(parts)
    assert batch.rows == 6 and indices == [0, 1, 4, 6]
    # ...and splits the result with result[start:stop], one slice per request.
    respond = responder(DEMO, "m:1", PredictResponse)
    result = BatchPredictions(double(batch), respond)
    assert len(result) == 6
    answer = result[1:4]
    assert json.loads(answer.body) == {"y": [6.0, 6.0, 6.0], "model": "m:1"}
    assert answer.headers["X-Model"] == "m:1"


def test_response_flattens_one_value_per_row() -> None:
    respond = responder(DEMO, "m:1", PredictResponse)
    y = np.array([[2.0], [4.0]], dtype=np.float32)
    assert json.loads(respond({"y": y}).body) == {"y": [2.0, 4.0], "model": "m:1"}


def test_signature_round_trips_through_bentoml_metadata() -> None:
    # What BentoML's model store accepts as metadata, by its own check.
    from bentoml._internal.utils import validate_metadata  # noqa: TID251

    meta = {"signature": DEMO.to_metadata()}
    validate_metadata(meta)  # BentoML refuses None and other non-basic types
    assert Signature.from_metadata(meta["signature"]) == DEMO
    assert DEMO.columns == ("x",) and DEMO.batch == "dynamic"


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


def test_rank_1_models_take_rows_of_one_value() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Neg", ["v"], ["w"])],
        "negate",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sig = model_store.inspect(model.SerializeToString(), ImportOptions())
    request = request_model(sig, 100)
    assert request.model_validate_json('{"x": [[1.0], [-2.5]]}').feeds.arrays["v"].shape == (2,)
    with pytest.raises(ValidationError, match="takes 1 feature"):
        request.model_validate_json('{"x": [[1.0, 2.0]]}')


def test_no_pickle_anywhere_in_the_product() -> None:
    """Models are ONNX files and data is JSON, raw tensors, CSV or .npy without objects. The
    one exception is `train_and_save.py convert` (onnx_serving/model/convert/), which loads a
    user's scikit-learn pickle or TorchScript archive only with --trust, and is not in the
    bento."""
    root = Path(__file__).resolve().parent.parent
    sources = [root / "service.py", root / "train_and_save.py", *root.glob("onnx_serving/**/*.py")]
    convert = root / "onnx_serving" / "model" / "convert"
    assert '"onnx_serving/model/convert/"' in (root / "bentofile.yaml").read_text()
    assert "if not args.trust:" in (convert / "__init__.py").read_text()
    for path in sources:
        if convert in path.parents:
            continue
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path
        assert "cloudpickle" not in text and "import joblib" not in text, path


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "bentoml-1.4.39"])
def test_the_request_timeout_leaves_no_timer_behind(fixed: bool) -> None:
    """_patches.bentoml_timeout: BentoML's TimeoutMiddleware kept one timer per request for the
    whole timeout and ran the app in a task of its own; the fixed one cancels its timer when the
    request ends, runs the app in the request's task, and still answers 504."""
    import asyncio

    from onnx_serving._patches.bentoml_timeout import TimeoutMiddleware

    # The fixed class, or the one it fixes (its base: BentoML's own).
    middleware = TimeoutMiddleware if fixed else TimeoutMiddleware.__bases__[0]

    tasks: set[object] = set()

    async def quick(scope: dict, receive: object, send: object) -> None:
        tasks.add(asyncio.current_task())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow(scope: dict, receive: object, send: object) -> None:
        await asyncio.sleep(10)

    async def run() -> tuple[int, list[int]]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        def live_timers() -> int:  # the loop's schedule: private, but exactly the point
            return sum(not h.cancelled() for h in asyncio.get_running_loop()._scheduled)

        before = live_timers()
        for _ in range(100):
            await middleware(quick, timeout=300)({"type": "http"}, None, send)
        left = live_timers() - before
        sent.clear()
        await middleware(slow, timeout=0.05)({"type": "http"}, None, send)
        return left, [m["status"] for m in sent if m["type"] == "http.response.start"]

    left, statuses = asyncio.run(run())
    assert statuses == [504]
    assert left == (0 if fixed else 100)  # the original keeps one per request for 300 s
    assert len(tasks) == (1 if fixed else 100)  # the original made a task per request


# Request bodies shaped like tensors: numbers mostly, now and then a value of another type,
# a ragged row, a row that is a number, an empty list.
CELLS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from([True, None, "1.5", [], [1.0]]),
)
TENSORS = st.one_of(
    st.lists(CELLS, max_size=6),
    st.lists(st.lists(CELLS, min_size=0, max_size=3), max_size=5),
    st.lists(st.lists(st.lists(CELLS, max_size=2), max_size=2), max_size=2),
)


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "models"
# The demo ([rows, 1]), three named features ([rows, 3]) and two inputs ([rows, 3] each).
SHAPES = {
    "demo": PredictRequest,
    **{
        name: request_model(
            model_store.inspect((FIXTURES / f"{name}.onnx").read_bytes(), ImportOptions()), 1000
        )
        for name in ("sklearn_linear", "torch_two_inputs")
    },
}


@pytest.mark.parametrize("name", SHAPES)
@settings(max_examples=300, deadline=None)
@given(x=TENSORS, y=TENSORS)
def test_the_fast_path_decides_as_the_full_model(name: str, x: list, y: list) -> None:
    """validation.RequestBase tries the plain shapes first: it must accept exactly what the
    full model (pydantic's own model_validate_json) accepts, with the same arrays."""
    model = SHAPES[name]
    body = json.dumps({"inputs": {"a": x, "b": y}} if name == "torch_two_inputs" else {"x": x})
    full = BaseModel.model_validate_json.__func__  # the full model, without the fast path
    try:
        want = full(model, body).feeds.arrays
    except ValidationError:
        with pytest.raises(ValidationError):
            model.model_validate_json(body)
        return
    got = model.model_validate_json(body).feeds.arrays
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])


def test_the_readme_documents_every_setting_and_no_other() -> None:
    """onnx_serving/config.py is the one place settings live; the documentation's tables name
    each one's environment variable (Configuration, Operating it's Limits, Versions)."""
    from onnx_serving.config import Settings

    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add(alias.choices[0] if alias is not None else name.upper())
    root = Path(__file__).resolve().parent.parent
    readme = "\n".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    documented = set()
    for line in readme.splitlines():
        if line.startswith("| `") and "|" in line[1:]:
            first = line.split("|")[1]
            documented |= {v for v in re.findall(r"`([A-Z][A-Z0-9_]+)`", first)}
    others = {"BENTOML_HOME", "PORT"}  # read by BentoML and make, not by the service
    assert names - documented == set(), "settings the docs do not document"
    assert documented - names - others == set(), "documented variables that are not settings"


def test_images_can_be_resized_on_the_shorter_side_and_centre_cropped() -> None:
    """torchvision's Resize(N) + CenterCrop: a wide picture, blue | red | green in thirds,
    becomes all red; resized as it is (the default), all three colours remain."""
    import io

    from PIL import Image

    from onnx_serving.model.signature import ImageRecipe
    from onnx_serving.protocols.images import to_tensor

    picture = Image.new("RGB", (300, 100))
    for i, colour in enumerate([(0, 0, 255), (255, 0, 0), (0, 255, 0)]):
        picture.paste(colour, (100 * i, 0, 100 * (i + 1), 100))
    png = io.BytesIO()
    picture.save(png, "PNG")
    base = {"layout": "NHWC", "channels": "RGB", "height": 32, "width": 32}
    plain = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    cropped = to_tensor(png.getvalue(), ImageRecipe(**base, **plain, resize=32))[0]
    assert cropped.shape == (32, 32, 3)
    inside = cropped[:, 2:-2]  # the outer columns blend with the neighbours as they are resized
    assert np.allclose(inside[..., 0], 1.0) and np.allclose(inside[..., 1:], 0.0)
    stretched = to_tensor(png.getvalue(), ImageRecipe(**base, **plain))[0]
    assert stretched[16, 2, 2] > 0.9 and stretched[16, 16, 0] > 0.9 and stretched[16, 29, 1] > 0.9
