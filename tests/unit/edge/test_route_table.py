"""The route table (edge/route_table.py)."""

from __future__ import annotations

from onnx_serving.config import Settings
from onnx_serving.edge.route_table import ROUTES, body_limit, json_budget, route_of


def test_the_route_table_names_every_prediction_route_and_its_limit() -> None:
    settings = Settings()
    assert route_of("/predict/").path == "/predict"
    assert route_of("/v2/models/m/versions/3/infer").json_values
    assert route_of("/livez").auth is False and route_of("/nope") is None
    for path in ("/predict", "/predict_batched", "/predict_binary", "/predict_file"):
        assert ROUTES[path].media_types and body_limit(ROUTES[path], settings)[0] > 0
    assert body_limit(route_of("/predict"), settings) == (settings.json_limit, "MAX_JSON_BYTES")
    assert json_budget(settings) >= 2 * settings.max_values
