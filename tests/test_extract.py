from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.extract import (
    FORMATS,
    MAX_ROWS,
    Extracted,
    extract_request,
    extract_response,
    is_plain_prediction,
    is_plain_record,
    rows_from_body,
)

# -- requests: one table of realistic payloads per format ----------------------------------

# TF Serving REST API, row ("instances") format, with a signature name.
TF_INSTANCES = {
    "signature_name": "serving_default",
    "instances": [
        {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
        {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
    ],
}
# TF Serving REST API, columnar ("inputs") format: the same two rows.
TF_COLUMNAR = {
    "inputs": {
        "tag": ["foo", "bar"],
        "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
        "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
    }
}
# KServe v1 with named features.
KSERVE_V1 = {"instances": [{"age": 39, "workclass": "State-gov"}, {"age": 50, "workclass": None}]}
# Open Inference Protocol (KServe v2), the spec's example: tensors of different batch sizes.
V2_SPEC = {
    "id": "42",
    "inputs": [
        {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
        {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
    ],
}
V2_TABULAR = {
    "inputs": [
        {"name": "age", "shape": [2], "datatype": "FP32", "data": [39.0, 50.0]},
        {"name": "hours", "shape": [2, 1], "datatype": "INT64", "data": [[40], [13]]},
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "world"]},
    ],
    "parameters": {"content_type": "pd"},
}
MLFLOW_SPLIT = {
    "dataframe_split": {
        "index": [0, 1],
        "columns": ["alcohol", "chlorides", "color"],
        "data": [[12.8, 0.029, "red"], [9.1, 0.05, "white"]],
    }
}
MLFLOW_RECORDS = {"dataframe_records": [{"alcohol": 12.8, "color": "red"}, {"alcohol": 9.1}]}
PANDAS_SPLIT = {"columns": ["a", "b"], "index": [7, 8], "data": [[1, "x"], [2, "y"]]}


@pytest.mark.parametrize(
    ("body", "format", "rows", "rejected"),
    [
        (TF_INSTANCES, "instances", TF_INSTANCES["instances"], 0),
        (KSERVE_V1, "instances", KSERVE_V1["instances"], 0),
        (TF_COLUMNAR, "inputs_columnar", TF_INSTANCES["instances"], 0),
        (
            V2_SPEC,
            "v2",
            [
                {"input0": [1, 2], "input1": True},
                {"input0": [3, 4], "input1": False},
                {"input1": True},
            ],
            0,
        ),
        (
            V2_TABULAR,
            "v2",
            [
                {"age": 39.0, "hours": 40, "text": "hello"},
                {"age": 50.0, "hours": 13, "text": "world"},
            ],
            0,
        ),
        (
            MLFLOW_SPLIT,
            "dataframe_split",
            [
                {"alcohol": 12.8, "chlorides": 0.029, "color": "red"},
                {"alcohol": 9.1, "chlorides": 0.05, "color": "white"},
            ],
            0,
        ),
        (MLFLOW_RECORDS, "records", MLFLOW_RECORDS["dataframe_records"], 0),
        (PANDAS_SPLIT, "dataframe_split", [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], 0),
        (
            {"age": 39, "address": {"city": "Oslo"}},
            "records",
            [{"age": 39, "address": {"city": "Oslo"}}],
            0,
        ),
        ([{"age": 39}, {"age": 50}], "records", [{"age": 39}, {"age": 50}], 0),
        ({}, "records", [{}], 0),
        ([], "records", [], 0),
    ],
)
def test_extract_request_reads_each_format_into_rows(
    body: Any, format: str, rows: list[dict[str, Any]], rejected: int
) -> None:
    assert extract_request(body) == Extracted(rows, format, rejected)


@pytest.mark.parametrize(
    ("body", "format", "rows", "rejected"),
    [
        # Unnamed positional features (KServe v1 sklearn iris) have no feature names.
        ({"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}, "instances", [], 2),
        ({"instances": ["a single named input", 3]}, "instances", [], 2),
        ({"instances": [{"a": 1}, [1, 2], None]}, "instances", [{"a": 1}], 2),
        ([{"a": 1}, 5, "row", None, {"a": 2}], "records", [{"a": 1}, {"a": 2}], 3),
        ({"dataframe_records": [{"a": 1}, 2]}, "records", [{"a": 1}], 1),
        (
            {"dataframe_split": {"columns": ["a"], "data": [[1], 2, [3]]}},
            "dataframe_split",
            [{"a": 1}, {"a": 3}],
            1,
        ),
        # TF Serving's single unnamed input, row by row: no names either.
        ({"inputs": [[1, 2], [3, 4], [5, 6]]}, "inputs_columnar", [], 3),
    ],
)
def test_items_that_cannot_be_named_rows_are_counted_as_rejected(
    body: Any, format: str, rows: list[dict[str, Any]], rejected: int
) -> None:
    assert extract_request(body) == Extracted(rows, format, rejected)


@pytest.mark.parametrize(
    ("inputs", "rows", "rejected"),
    [
        ({"a": 1, "b": "x"}, [{"a": 1, "b": "x"}], 0),
        ({"a": [1, 2], "b": "x"}, [{"a": 1}, {"a": 2}], 1),
        ({"a": [1, 2, 3], "b": [10]}, [{"a": 1, "b": 10}, {"a": 2}, {"a": 3}], 0),
        ({"a": [1], "b": [10, 20]}, [{"a": 1, "b": 10}, {"b": 20}], 0),
        ({"a": [], "b": []}, [], 0),
        ({}, [], 0),
    ],
)
def test_tf_columnar_inputs_zip_scalars_and_ragged_columns_without_crashing(
    inputs: dict[str, Any], rows: list[dict[str, Any]], rejected: int
) -> None:
    assert extract_request({"inputs": inputs}) == Extracted(rows, "inputs_columnar", rejected)


IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.mark.parametrize(
    ("body", "format", "rows", "rejected"),
    [
        (
            {"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4]]},
            "instances",
            [dict(zip(IRIS, [6.8, 2.8, 4.8, 1.4], strict=True))],
            1,
        ),
        (
            {"inputs": [[1, 2, 3, 4]]},
            "inputs_columnar",
            [dict(zip(IRIS, [1, 2, 3, 4], strict=True))],
            0,
        ),
        ([{"sepal_length": 5.1}, [1, 2, 3, 4, 5], 7], "records", [{"sepal_length": 5.1}], 2),
    ],
)
def test_positional_rows_are_named_in_order_only_when_their_length_matches_the_names(
    body: Any, format: str, rows: list[dict[str, Any]], rejected: int
) -> None:
    assert extract_request(body, names=IRIS) == Extracted(rows, format, rejected)


# -- v2 tensors ----------------------------------------------------------------------------


def tensor(name: str, shape: Any, data: Any, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize(
    ("shape", "data", "values"),
    [
        ([3], [1, 2, 3], [1, 2, 3]),
        ([3, 1], [1, 2, 3], [1, 2, 3]),
        ([3, 1], [[1], [2], [3]], [1, 2, 3]),
        ([2, 3], [1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]),
        ([2, 3], [[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 6]]),
        ([1, 2, 2], [1, 2, 3, 4], [[[1, 2], [3, 4]]]),
        ([2, 1, 1], [1, 2], [[[1]], [[2]]]),
        ([0, 4], [], []),
    ],
)
def test_v2_tensors_split_along_the_first_dimension(
    shape: list[int], data: list[Any], values: list[Any]
) -> None:
    extracted = extract_request({"inputs": [tensor("x", shape, data)]})
    assert extracted == Extracted([{"x": value} for value in values], "v2")


def test_v2_rows_are_the_row_major_reshape_of_flat_data() -> None:
    flat = list(range(2 * 3 * 4))
    extracted = extract_request({"inputs": [tensor("x", [2, 3, 4], flat, "INT32")]})
    assert extracted is not None
    assert [row["x"] for row in extracted.rows] == np.arange(24).reshape(2, 3, 4).tolist()


def test_v2_bytes_tensors_give_strings() -> None:
    body = {
        "inputs": [
            tensor("review", [2, 1], ["great film", "dull"], "BYTES"),
            tensor("tokens", [2, 2], ["a", "b", "c", "d"], "BYTES"),
        ]
    }
    assert extract_request(body) == Extracted(
        [{"review": "great film", "tokens": ["a", "b"]}, {"review": "dull", "tokens": ["c", "d"]}],
        "v2",
    )


@pytest.mark.parametrize(
    "bad",
    [
        tensor("x", [2], [1, 2, 3]),  # data longer than the shape
        tensor("x", [2, 3], [1, 2, 3, 4, 5]),  # shorter
        tensor("x", [2, 2], [[1, 2], [3]]),  # ragged nesting
        tensor("x", [-1], [1]),
        tensor("x", [], [1]),
        tensor("x", [2, 0], []),  # rows with no elements
        tensor("x", [True], [1]),
        tensor("x", "2", [1, 2]),
        tensor("x", [2], "ab"),
        {"shape": [2], "data": [1, 2]},
        tensor("x", [1] * 65, [1]),  # deeper than numpy allows
        tensor("x", [2**70], [1]),
        tensor("x", [2**70, 0], []),  # would be 2**70 empty rows
        "not a tensor",
    ],
)
def test_a_v2_tensor_that_does_not_fit_its_shape_is_rejected_and_the_others_kept(
    bad: Any,
) -> None:
    body = {"inputs": [tensor("age", [2], [39, 50]), bad]}
    assert extract_request(body) == Extracted([{"age": 39}, {"age": 50}], "v2", 1)


# -- records fall-back and no format -------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"instances": 5},
        {"inputs": "text"},
        {"dataframe_split": {"columns": [["a"]], "data": [[1]]}},
        {"columns": ["a"], "data": [[1]], "label": 1},
        {"columns": "a", "data": [[1]]},
    ],
)
def test_an_object_whose_keys_look_like_a_format_but_do_not_fit_is_one_record(
    body: dict[str, Any],
) -> None:
    assert extract_request(body) == Extracted([body], "records")


def test_pandas_split_with_a_default_range_index_names_columns_with_strings() -> None:
    assert extract_request({"columns": [0, 1], "data": [[1, 2], [3]]}) == Extracted(
        [{"0": 1, "1": 2}, {"0": 3}], "dataframe_split"
    )


@pytest.mark.parametrize("body", [42, 1.5, "text", None, True])
def test_a_body_in_no_format_gives_none(body: Any) -> None:
    assert extract_request(body) is None
    assert rows_from_body(body) is None


# -- responses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "format", "rows"),
    [
        # TF Serving row format, one unnamed output (class probabilities).
        (
            {"predictions": [[0.1, 0.9], [0.7, 0.3]]},
            "predictions",
            [{"prediction": [0.1, 0.9]}, {"prediction": [0.7, 0.3]}],
        ),
        # TF Serving row format, named outputs.
        (
            {
                "predictions": [
                    {"scores": [0.2, 0.8], "classes": 1},
                    {"scores": [0.9, 0.1], "classes": 0},
                ]
            },
            "predictions",
            [{"scores": [0.2, 0.8], "classes": 1}, {"scores": [0.9, 0.1], "classes": 0}],
        ),
        # KServe v1 sklearn and MLflow scoring server.
        (
            {"predictions": [1, 0, None]},
            "predictions",
            [{"prediction": 1}, {"prediction": 0}, {"prediction": None}],
        ),
        (
            {"predictions": [{"label": "cat"}, 0.3]},
            "predictions",
            [{"label": "cat"}, {"prediction": 0.3}],
        ),
        # TF Serving columnar responses (the answer to an "inputs" request).
        ({"outputs": [0.25, 0.75]}, "predictions", [{"prediction": 0.25}, {"prediction": 0.75}]),
        (
            {"outputs": {"scores": [0.2, 0.9], "classes": [0, 1]}},
            "predictions",
            [{"scores": 0.2, "classes": 0}, {"scores": 0.9, "classes": 1}],
        ),
        # Open Inference Protocol response.
        (
            {
                "model_name": "income",
                "model_version": "1",
                "id": "42",
                "outputs": [
                    {"name": "score", "shape": [3, 1], "datatype": "FP32", "data": [0.2, 0.7, 0.1]},
                    {
                        "name": "label",
                        "shape": [3],
                        "datatype": "BYTES",
                        "data": ["lo", "hi", "lo"],
                    },
                ],
            },
            "v2_outputs",
            [
                {"score": 0.2, "label": "lo"},
                {"score": 0.7, "label": "hi"},
                {"score": 0.1, "label": "lo"},
            ],
        ),
        ([0.5, 0.7], "records", [{"prediction": 0.5}, {"prediction": 0.7}]),
        ([{"score": 0.5}, [1, 2]], "records", [{"score": 0.5}, {"prediction": [1, 2]}]),
        ({"score": 0.5}, "records", [{"score": 0.5}]),
        (0.5, "records", [{"prediction": 0.5}]),
        ("cat", "records", [{"prediction": "cat"}]),
        ([], "records", []),
    ],
)
def test_extract_response_reads_each_format_into_rows(
    body: Any, format: str, rows: list[dict[str, Any]]
) -> None:
    assert extract_response(body) == Extracted(rows, format)


def test_unnamed_outputs_take_the_output_name_given() -> None:
    assert extract_response({"predictions": [0.1]}, output_name="score") == Extracted(
        [{"score": 0.1}], "predictions"
    )


def test_a_v2_output_tensor_that_does_not_fit_its_shape_is_rejected() -> None:
    body = {"outputs": [tensor("score", [2], [0.1, 0.2]), tensor("label", [2], ["a"], "BYTES")]}
    assert extract_response(body) == Extracted([{"score": 0.1}, {"score": 0.2}], "v2_outputs", 1)


def test_a_null_response_has_no_usable_output() -> None:
    assert extract_response(None) is None


# -- bounds --------------------------------------------------------------------------------

N = MAX_ROWS + 1
ROW = {"x": 1}


@pytest.mark.parametrize(
    ("body", "format"),
    [
        ([ROW] * N, "records"),
        ({"instances": [ROW] * N}, "instances"),
        ({"dataframe_records": [ROW] * N}, "records"),
        ({"inputs": {"x": [1] * N}}, "inputs_columnar"),
        ({"inputs": [tensor("x", [N], [1] * N)]}, "v2"),
        ({"inputs": [tensor("x", [N, 1], [1] * N), tensor("y", [2], [1, 1])]}, "v2"),
        ({"dataframe_split": {"columns": ["x"], "data": [[1]] * N}}, "dataframe_split"),
    ],
)
def test_a_request_of_more_than_max_rows_is_truncated_and_the_rest_rejected(
    body: Any, format: str
) -> None:
    extracted = extract_request(body)
    assert extracted is not None
    assert (len(extracted.rows), extracted.format, extracted.rejected) == (MAX_ROWS, format, 1)
    assert extracted.rows[-1]["x"] == 1


@pytest.mark.parametrize(
    "body",
    [{"predictions": [0.5] * N}, [ROW] * N, {"outputs": [tensor("x", [N, 1], [0.5] * N)]}],
)
def test_a_response_of_more_than_max_rows_is_truncated_and_the_rest_rejected(body: Any) -> None:
    extracted = extract_response(body, output_name="x")
    assert extracted is not None
    assert (len(extracted.rows), extracted.rejected) == (MAX_ROWS, 1)


def test_deeply_nested_v2_data_is_flattened_without_recursion() -> None:
    data: list[Any] = [7]
    for _ in range(10_000):  # far beyond the interpreter's recursion limit
        data = [data]
    assert extract_request({"inputs": [tensor("x", [1], data)]}) == Extracted([{"x": 7}], "v2")


# Format keys and a few telling scalars keep 2,000 examples cheap while reaching every
# detector; the tables above cover well-formed tensors.
FORMAT_KEYS = st.sampled_from(
    [
        "instances",
        "inputs",
        "outputs",
        "predictions",
        "name",
        "shape",
        "data",
        "columns",
        "index",
        "dataframe_split",
        "dataframe_records",
    ]
)
SCALARS = st.sampled_from([None, True, False, -1, 0, 1, 2, 3, 2**70, 1.5, float("nan"), "", "a"])
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(FORMAT_KEYS, children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=2000, deadline=None, database=None)
@given(JSON)
def test_no_json_value_makes_extraction_raise_or_exceed_max_rows(body: Any) -> None:
    named = extract_request(body, names=["a", "b"])
    for extracted in (extract_request(body), named, extract_response(body)):
        if extracted is not None:
            assert extracted.format in FORMATS
            assert len(extracted.rows) <= MAX_ROWS
            assert extracted.rejected >= 0
            assert all(type(row) is dict for row in extracted.rows)
    request = extract_request(body)
    rows = rows_from_body(body)
    assert (rows is None) == (request is None)
    if request is not None and rows is not None:
        assert len(rows) == len(request.rows) + request.rejected


ENVELOPE_KEYS = st.sampled_from(["jsonData", "meta", "status", "data", "columns", "index"])
WIDE_OBJECTS = st.dictionaries(
    FORMAT_KEYS | ENVELOPE_KEYS | st.text(max_size=2), JSON, min_size=3, max_size=8
)


@settings(max_examples=1000, deadline=None, database=None)
@given(WIDE_OBJECTS | JSON)
def test_a_plain_record_is_exactly_what_extraction_reads_as_one_record(body: Any) -> None:
    # The worker's fast path must agree with the full extraction on every body it takes.
    if is_plain_record(body):
        assert extract_request(body) == Extracted([body], "records")
        assert extract_request(body, names=["a", "b"]) == Extracted([body], "records")


@settings(max_examples=500, deadline=None, database=None)
@given(JSON | st.fixed_dictionaries({"predictions": st.lists(JSON, max_size=2)}))
def test_a_plain_prediction_is_exactly_what_extraction_reads_as_one_output(body: Any) -> None:
    # The worker's fast path must agree with the full extraction on every body it takes.
    if is_plain_prediction(body):
        value = body["predictions"][0]
        assert extract_response(body, output_name="p") == Extracted([{"p": value}], "predictions")


def test_one_unnamed_prediction_is_plain_and_other_outputs_are_not() -> None:
    assert is_plain_prediction({"predictions": [0.25]})
    assert not is_plain_prediction({"predictions": [0.25, 0.5]})
    assert not is_plain_prediction({"predictions": [{"score": 0.25}]})
    assert not is_plain_prediction({"outputs": [0.25]})
    assert not is_plain_prediction([0.25])


def test_the_usual_flat_request_is_a_plain_record_and_envelopes_are_not() -> None:
    flat = {f"f{j}": float(j) for j in range(8)}
    assert is_plain_record(flat)
    assert not is_plain_record({**flat, "instances": [flat]})
    assert not is_plain_record({"columns": ["a"], "data": [[1]], "index": [0]})
    seldon = {"data": {"names": ["a"], "ndarray": [[1]]}, "meta": {}, "status": {}, "jsonData": 1}
    assert extract_request(seldon) != Extracted([seldon], "records")
    assert not is_plain_record(seldon)
    assert not is_plain_record([flat])


# -- rows_from_body, as the offline check uses it ------------------------------------------


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        ({"x": 1, "color": "red"}, [{"x": 1, "color": "red"}]),
        ([{"x": 1}, {"x": 2}], [{"x": 1}, {"x": 2}]),
        ({"instances": [{"x": 1}]}, [{"x": 1}]),
        ([{"x": 1}, 5, "row"], [{"x": 1}, None, None]),
        ([1, 2], [None, None]),
    ],
)
def test_rows_from_body_gives_rows_then_a_none_for_each_rejected_item(
    body: Any, rows: list[Any]
) -> None:
    assert rows_from_body(body) == rows


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        (
            {"data": {"names": ["a", "b"], "ndarray": [[1, 2], [3, 4]]}},
            [{"a": 1, "b": 2}, {"a": 3, "b": 4}],
        ),
        (
            {"data": {"names": ["a", "b"], "tensor": {"shape": [2, 2], "values": [1, 2, 3, 4]}}},
            [{"a": 1, "b": 2}, {"a": 3, "b": 4}],
        ),
        ({"jsonData": {"a": 1, "b": "x"}}, [{"a": 1, "b": "x"}]),
        ({"data": {"ndarray": [[5, 6]]}, "meta": {}}, [{"x": 5, "y": 6}]),
    ],
    ids=["ndarray with names", "tensor", "jsonData", "positional with baseline names"],
)
def test_seldon_v1_requests_become_named_rows(body: Any, rows: list[Any]) -> None:
    extracted = extract_request(body, names=["x", "y"])
    assert extracted is not None
    assert extracted.format == "seldon"
    assert extracted.rows == rows


def test_a_record_with_a_data_feature_is_not_read_as_seldon() -> None:
    extracted = extract_request({"data": {"ndarray": [[1]]}, "age": 3})
    assert extracted is not None and extracted.format == "records"


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        ({"data": {"names": ["score"], "ndarray": [0.1, 0.9]}}, [{"score": 0.1}, {"score": 0.9}]),
        ({"data": {"ndarray": [0.3]}, "meta": {}}, [{"p": 0.3}]),
        ({"data": {"names": ["p0", "p1"], "ndarray": [[0.1, 0.9]]}}, [{"p0": 0.1, "p1": 0.9}]),
    ],
)
def test_seldon_v1_responses_become_output_rows(body: Any, rows: list[Any]) -> None:
    extracted = extract_response(body, output_name="p")
    assert extracted is not None
    assert extracted.rows == rows


def test_mlflow_inputs_as_records_are_rows_not_tensors() -> None:
    extracted = extract_request({"inputs": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]})
    assert extracted is not None
    assert extracted.rows == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert extracted.rejected == 0
