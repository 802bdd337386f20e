"""Simulated traffic through the real broker reads back valid, with the counts the simulator reports."""

import orjson

from streams.contract.schemas import decode_exposure, decode_item, decode_ranking

from ...conftest import read_topic, simulate


def test_simulated_traffic_round_trips_through_the_broker(stack_env, kafka_bootstrap, tmp_path):
    report = simulate(stack_env, tmp_path, "--requests", "120", "--rate", "3000", "--items", "500",
                      "--candidates", "300", "--duplicate-rate", "0.02")
    prefix = stack_env["HAP_TOPIC_PREFIX"]
    rankings = [decode_ranking(v) for v in read_topic(kafka_bootstrap, prefix + "ranking", report["ranking"], 20)]
    exposure = [decode_exposure(v) for v in read_topic(kafka_bootstrap, prefix + "exposure",
                                                       report["exposure"] + report["feedback"], 20)]
    items = [decode_item(v) for v in read_topic(kafka_bootstrap, prefix + "items", report["items"], 20)]
    assert len(rankings) == report["ranking"] and len({r.request_id for r in rankings}) == report["requests"]
    assert sum(e.type == "exposure" for e in exposure) == report["exposure"]
    assert sum(e.type == "feedback" for e in exposure) == report["feedback"]
    assert len(items) == report["items"] == 500
    assert report["duplicates"] > 0 and all(len(r.candidates) == 300 for r in rankings)
    assert orjson.loads(read_topic(kafka_bootstrap, prefix + "ranking", 1)[0])["schema_version"] == 1
