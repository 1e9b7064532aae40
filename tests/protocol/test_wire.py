"""The wire protocol's parsing and validation, without sockets."""

from __future__ import annotations

import math

import msgpack
import pytest

from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.protocol import wire
from orloj_rt.protocol.wire import RequestValidator, WireError

EE = RequestValidator(BUILTIN_MODELS["early_exit"].spec)


def hdr(**kw) -> dict:
    base = {"v": 1, "id": 7, "model": "early_exit",
            "inputs": [{"name": "tokens", "dtype": "int64", "shape": [4]}]}  # fmt: skip
    base.update(kw)
    return base


def test_a_good_request():
    req = EE.check(hdr(slo_ms=20, app="a", hint=3), 7, [b"\0" * 32])
    assert req.app == "a" and math.isclose(req.slo_s, 0.02) and req.hint == 3.0
    assert req.shapes == [[4]] and len(req.frames[0]) == 32


def test_defaults():
    req = EE.check(hdr(), 7, [b"\0" * 32])
    assert req.app == "default" and req.slo_s == 0.05 and req.hint is None


@pytest.mark.parametrize(
    "change, frames, text",
    [
        ({"slo_ms": -1}, 1, "slo_ms"),
        ({"slo_ms": float("inf")}, 1, "slo_ms"),
        ({"slo_ms": True}, 1, "slo_ms"),
        ({"slo_ms": 1e12}, 1, "at most"),
        ({"hint": "x"}, 1, "hint"),
        ({"hint": float("nan")}, 1, "hint"),
        ({"app": ""}, 1, "app"),
        ({"app": "x" * 500}, 1, "app"),
        ({"inputs": "tokens"}, 1, "needs \"inputs\""),
        ({"inputs": [7]}, 1, "must be a map"),
        ({"inputs": [{"name": "tokens", "dtype": "int64", "shape": [4]}] * 2}, 2, "extra"),
        ({"inputs": [{"name": "tokens", "dtype": "int64", "shape": [0]}]}, 1, "outside"),
        ({"inputs": [{"name": "tokens", "dtype": "int64", "shape": ["4"]}]}, 1, "ints"),
        ({"inputs": [{"name": "tokens", "dtype": "int64", "shape": [True]}]}, 1, "ints"),
        ({"inputs": [{"name": "tokens", "dtype": "int64", "shape": 4}]}, 1, "array of ints"),
    ],
)
def test_bad_fields(change, frames, text):
    with pytest.raises(WireError, match=text.replace("(", r"\(")) as exc:
        EE.check(hdr(**change), 7, [b"\0" * 32] * frames)
    assert exc.value.req_id == 7


def test_parse_header_checks_version_id_op():
    h = wire.parse_header(msgpack.packb({"v": 1, "id": "abc", "op": "stats"}))
    assert h.req_id == "abc" and h.op == "stats"
    assert wire.parse_header(msgpack.packb({"v": 1, "id": 1})).op == "infer"
    for raw, text in [
        (msgpack.packb({"v": 1, "id": 1.5}), "must be an int or a str"),
        (msgpack.packb({"v": True, "id": 1}), "unsupported protocol version"),
        (msgpack.packb({"v": 1, "id": 1, "op": 3}), "unknown op"),
        (b"\x81", "not valid msgpack"),
        (b"x" * (wire.MAX_HEADER_BYTES + 1), "limit"),
    ]:
        with pytest.raises(WireError, match=text):
            wire.parse_header(raw)


def test_split_envelope():
    assert wire.split_envelope([b"id", b"", b"h", b"d"]) == (2, None)
    assert wire.split_envelope([b"id", b"route", b"", b"h"]) == (3, None)
    assert "no header" in wire.split_envelope([b"id", b""])[1]
    assert "empty delimiter" in wire.split_envelope([b"id", b"h"])[1]


def test_reply_header():
    h = msgpack.unpackb(wire.encode_reply(3, "error", "bad"))
    assert h == {"v": 1, "id": 3, "status": "error", "error": "bad"}
    h = msgpack.unpackb(wire.encode_reply(None, "ok", result={"a": 1}))
    assert h == {"v": 1, "id": None, "status": "ok", "result": {"a": 1}}
