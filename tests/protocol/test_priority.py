"""A request's `priority` tier on the wire and between the processes (issue 17)."""

from __future__ import annotations

import pytest

from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol.wire import MAX_PRIORITY, RequestValidator, WireError

EE = RequestValidator(BUILTIN_MODELS["early_exit"].spec)


def hdr(**kw) -> dict:
    base = {"v": 1, "id": 7, "model": "early_exit",
            "inputs": [{"name": "tokens", "dtype": "int64", "shape": [4]}]}  # fmt: skip
    base.update(kw)
    return base


def test_a_priority_is_an_integer_tier_with_a_default():
    assert EE.check(hdr(), 7, [b"\0" * 32]).priority == 0
    assert EE.check(hdr(priority=None), 7, [b"\0" * 32]).priority == 0
    assert EE.check(hdr(priority=MAX_PRIORITY), 7, [b"\0" * 32]).priority == MAX_PRIORITY


@pytest.mark.parametrize("value", [-1, MAX_PRIORITY + 1, 2**70, 1.0, 2.5, True, "1", [1]])
def test_a_bad_priority_is_an_error_naming_the_field(value):
    with pytest.raises(WireError) as info:
        EE.check(hdr(priority=value), 7, [b"\0" * 32])
    assert '"priority"' in info.value.text and f"0..{MAX_PRIORITY}" in info.value.text
    assert info.value.req_id == 7


def test_descriptors_carry_the_tier_and_batches_their_variant():
    d = msgs.RequestDescriptor(1, 0, "a", 1.0, 2.0, None, 3, 4, 5)
    sub = msgs.decode(msgs.encode(msgs.Submit([list(d)])))
    back = msgs.RequestDescriptor(*sub.requests[0])
    assert back == d and back.priority == 5
    # an older sender's 8 fields read as the default tier
    assert msgs.RequestDescriptor(*list(d)[:8]).priority == 0
    run = msgs.decode(msgs.encode(msgs.RunBatch(1, 0, [1], [2], [3], "half")))
    assert run.variant == "half"
    assert msgs.decode(msgs.encode(msgs.RunBatch(1, 0, [1], [2], [3]))).variant is None
    res = msgs.decode(msgs.encode(msgs.Results(0, [1], 0.0, 5, [[[2]]], None, 0, "quarter")))
    assert res.variant == "quarter"
