"""A MIND-layout log whose categories are all empty replays through the real worker: every request
gets its group (issue 32: the empty category was sent as `content_type` and refused)."""

from deploy.pipeline import Component
from streams.contract.schemas import decode_sample_group
from streams.simulator.replay import UNKNOWN_TYPE, UNKNOWN_USER, MindReplay

from ...conftest import dead_letters_of, read_topic, simulate
from ...mind_log import write_mind_log


def test_replay_names_unknown_categories_and_users(tmp_path):
    replay = MindReplay(write_mind_log(tmp_path, requests=10), n_candidates=20)
    requests = list(replay.requests())
    assert {c.content_type for r in requests for c in r.ranking.candidates} == {UNKNOWN_TYPE}
    assert UNKNOWN_USER in {r.ranking.user_id for r in requests}
    assert all(r.ranking.user_id for r in requests)


def test_every_request_of_a_log_with_empty_categories_gets_its_group(stack_env, kafka_bootstrap, tmp_path):
    log = write_mind_log(tmp_path / "log", requests=60)
    prefix = stack_env["HAP_TOPIC_PREFIX"]
    streams = Component("streams", ["streams", "--window", "2", "--lateness", "1"], tmp_path, stack_env).start()
    try:
        report = simulate(stack_env, tmp_path, "--dataset", str(log), "--requests", "100", "--rate", "2000",
                          "--candidates", "40", "--duplicate-rate", "0")
        # corrections (feedback after the window) come too: read until nothing more comes
        groups = [decode_sample_group(v) for v in read_topic(kafka_bootstrap, prefix + "samples", 10**6,
                                                              timeout_s=30)]
    finally:
        streams.stop()
    expected = {f"mind-{r}" for r in range(1, 61)}
    assert report["requests"] == 60
    got = {g.request_id for g in groups if not g.correction}
    assert got == expected, dead_letters_of(kafka_bootstrap, prefix, expected - got)
    assert {it.content_type for g in groups for it in g.items} == {UNKNOWN_TYPE}
