"""Records framed for other ecosystems are refused with a reason that names the framing."""

import orjson
import pytest

from streams.contract.schemas import InvalidEvent, decode_exposure, decode_ranking_columns

EXPOSURE = {"schema_version": 1, "type": "exposure", "request_id": "r1", "user_id": "u", "item_id": "i",
            "ts_ms": 5, "position": 0}


@pytest.mark.parametrize("decode", [decode_exposure, decode_ranking_columns])
def test_a_confluent_schema_registry_frame_is_named(decode):
    framed = b"\x00" + (417).to_bytes(4, "big") + orjson.dumps(EXPOSURE)
    with pytest.raises(InvalidEvent) as refused:
        decode(framed)
    assert refused.value.kind == "json"
    assert "Confluent Schema Registry frame (magic byte 0, schema id 417)" in refused.value.reason


@pytest.mark.parametrize("decode", [decode_exposure, decode_ranking_columns])
def test_a_structured_cloudevent_is_named(decode):
    cloud = {"specversion": "1.0", "id": "e1", "source": "/app", "type": "hap.exposure",
             "datacontenttype": "application/json", "data": {k: v for k, v in EXPOSURE.items()
                                                             if k != "schema_version"}}
    with pytest.raises(InvalidEvent) as refused:
        decode(orjson.dumps(cloud))
    assert refused.value.field == "schema_version"
    assert "structured CloudEvent (specversion '1.0')" in refused.value.reason


def test_plain_garbage_keeps_the_json_reason():
    with pytest.raises(InvalidEvent, match=r"^json: unexpected"):
        decode_exposure(b"\x01nope")
