"""The emitter's schedule: in real time at a rate, how far it fell behind is reported."""

import dataclasses
import gc
import time

from streams.contract.schemas import RankingEvent
from streams.simulator.sink import emit
from streams.simulator.world import World


class SlowWriter:
    """A writer that takes ``send_s`` per event (a stand-in for a producer that cannot keep up)."""

    def __init__(self, send_s: float) -> None:
        self.send_s, self.sent = send_s, 0

    def send_ranking(self, event) -> None:
        self.sent += 1
        time.sleep(self.send_s)

    send_exposure = send_ranking

    def send_item(self, update) -> None:
        pass

    def close(self) -> None:
        pass


def requests(n: int):
    world = World(seed=0, n_users=50, n_items=200, feedback_delay_ms=10)
    return (world.request(i, 20) for i in range(n))


def test_an_emitter_that_cannot_hold_its_rate_reports_how_far_it_fell_behind():
    writer = SlowWriter(0.01)  # 100 events/s at most, asked for 1000
    report = emit(requests(10), writer, rate=1000, n_requests=10)
    sent = report.ranking + report.exposure + report.feedback
    assert sent == writer.sent > 20
    # the schedule spans ~sent ms; sending took ~10 ms each: the last events went out far behind
    assert report.max_late_ms > 0.5 * 10 * sent - sent


def test_an_emitter_without_a_schedule_reports_no_lateness():
    assert emit(requests(3), SlowWriter(0), rate=None, n_requests=3).max_late_ms == 0


class ClockedWriter(SlowWriter):
    """Records how far ahead of the wall clock each event's time was when it was sent."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ahead_ms: list[float] = []

    def send_ranking(self, event) -> None:
        self.ahead_ms.append(event.ts_ms - time.time() * 1000)

    send_exposure = send_ranking


def test_as_fast_as_possible_no_event_is_sent_ahead_of_its_own_time():
    """Feedback comes an exponential delay after its request; sent at once it ran up to 20 s ahead of
    the clock at 2,000 requests, past the 10 s a producer accepts (`hap simulate --rate 0` failed)."""
    world = World(seed=0, n_users=50, n_items=200, feedback_delay_ms=200)
    writer = ClockedWriter()
    report = emit((world.request(i, 20) for i in range(30)), writer, rate=None, n_requests=30)
    assert len(writer.ahead_ms) == report.ranking + report.exposure + report.feedback > 60
    assert max(writer.ahead_ms) <= 5  # ms: at most the clock's granularity


class LoggedWriter(SlowWriter):
    """Keeps every event sent, with how far ahead of the wall clock its time was."""

    def __init__(self) -> None:
        super().__init__(0)
        self.events: list = []
        self.ahead_ms: list[float] = []

    def send_ranking(self, event) -> None:
        self.events.append(event)
        self.ahead_ms.append(event.ts_ms - time.time() * 1000)

    send_exposure = send_ranking


def test_in_log_time_events_keep_the_logs_times_shifted_by_whole_hours_all_in_the_past(tmp_path):
    from streams.simulator.replay import MindReplay
    from streams.simulator.sink import BUCKET_ALIGN_MS, log_time_shift_ms

    from ...mind_log import write_mind_log

    replay = MindReplay(write_mind_log(tmp_path, requests=40), n_candidates=20)  # 30 s apart: 20 minutes
    requests = list(replay.requests())
    shift = log_time_shift_ms(replay.time_ms(len(requests) - 1))
    writer = LoggedWriter()
    report = emit(iter(requests), writer, rate=5000, n_requests=len(requests), log_shift_ms=shift)
    assert report.log_shift_ms == shift and shift % BUCKET_ALIGN_MS == 0
    assert max(writer.ahead_ms) < -60_000  # the last request a minute (or more) before sending started
    sent = {(e.request_id, getattr(e, "item_id", None), getattr(e, "type", "ranking")): e.ts_ms for e in writer.events}
    for r in requests:  # each event at its request's log time + shift + its own offset
        assert sent[r.ranking.request_id, None, "ranking"] == r.ranking.ts_ms + shift
        for offset, e in r.events:
            assert sent[e.request_id, e.item_id, e.type] == r.ranking.ts_ms + shift + offset
    times = [e.ts_ms for e in writer.events]
    assert times == sorted(times)  # in the log's order
    assert times[-1] - times[0] >= 39 * 30_000  # the log's span kept, though sent in well under a second


def slow_requests(n: int, generate_s: float):
    """Requests that take ``generate_s`` each to make (the synthetic world takes milliseconds for one of
    500 candidates)."""
    for request in requests(n):
        time.sleep(generate_s)
        yield request


def test_requests_generated_before_the_clock_starts_do_not_hold_the_schedule_back():
    rate = 12_000  # events/s: one request (12 events on average) due every millisecond
    late = emit(slow_requests(40, 0.01), SlowWriter(0), rate=rate, n_requests=40)
    assert late.max_late_ms > 200  # generated as they fall due, 10 ms each: 40 requests fall ~360 ms behind
    report = emit(slow_requests(40, 0.01), SlowWriter(0), rate=rate, n_requests=40, pregenerate=40)
    assert (report.pregenerated, report.requests) == (40, 40) and report.pregenerate_s >= 0.4
    assert report.max_late_ms < 50
    # the events sent up to the last request's start, per second: the schedule's rate (a few events of the
    # last requests' exposures, due 50 ms after them, are still to come then)
    assert 0.5 * rate < report.achieved_events_per_s < 1.5 * rate


class FreezeWatcher(SlowWriter):
    """Records how many objects the cycle collector leaves alone (frozen) at each send."""

    def __init__(self) -> None:
        super().__init__(0)
        self.frozen: list[int] = []

    def send_ranking(self, event) -> None:
        self.frozen.append(gc.get_freeze_count())


def test_pre_generated_requests_are_out_of_the_cycle_collectors_way_while_on_the_clock_and_only_then():
    assert gc.get_freeze_count() == 0  # no other code of this process left objects frozen
    writer = FreezeWatcher()
    emit(requests(20), writer, rate=12_000, n_requests=20, pregenerate=20)
    # a full collection walks every live object: tens of thousands of pre-generated ones at 500 candidates
    # made the simulator 330-360 ms late at 10,000 events/s (docs/performance.md)
    assert writer.frozen and min(writer.frozen) > 0
    assert gc.get_freeze_count() == 0  # the process is as it was once the emitter returns
    writer = FreezeWatcher()
    emit(requests(20), writer, rate=12_000, n_requests=20)  # nothing made ahead: nothing frozen
    assert writer.frozen and max(writer.frozen) == 0


def test_emitters_split_by_user_send_what_one_emitter_sends_each_request_at_its_place():
    """`hap simulate --processes N`: each emitter takes the requests of its users (their histories whole),
    in their places of the one schedule, from one start."""
    n, parts, rate = 30, 3, 12_000  # a request due every millisecond
    world = World(seed=4, n_users=7, n_items=200, feedback_delay_ms=10)
    one = [(r.ranking, r.events) for r in (world.request(i, 20) for i in range(n))]
    start_ms = time.time() * 1000 + 100
    sent: dict[tuple, tuple] = {}
    for part in range(parts):
        world = World(seed=4, n_users=7, n_items=200, feedback_delay_ms=10)
        slots = [i for i in range(n) if world.user_of(i) % parts == part]
        writer = LoggedWriter()
        emit((world.request(i, 20) for i in slots), writer, rate=rate, n_requests=len(slots), slots=slots,
             start=lambda: start_ms)
        sent |= {(e.request_id, getattr(e, "item_id", None), getattr(e, "type", "ranking")): e for e in writer.events}
    for index, (ranking, events) in enumerate(one):  # the same events, each at its slot's time plus its offset
        due = int(start_ms) + index  # slot i: i * 12 events / 12,000 events/s
        assert sent[ranking.request_id, None, "ranking"] == dataclasses.replace(ranking, ts_ms=due)
        for offset, e in events:
            assert sent[e.request_id, e.item_id, e.type] == dataclasses.replace(e, ts_ms=due + offset)
    assert len(sent) == sum(1 + len(events) for _, events in one)


class RawWriter(LoggedWriter):
    """A producer that also takes pre-encoded records (as the SDK's ``send_raw``)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[str, str, bytes]] = []

    def send_raw(self, topic: str, key: str, value: bytes) -> None:
        self.raw.append((topic, key, value))


def test_pre_generated_ranking_events_go_out_checked_and_encoded_once_with_their_own_time():
    from streams.contract.schemas import decode_ranking
    from streams.kafka.producer import encode_checked

    made = list(requests(5))
    writer = RawWriter()
    report = emit(iter(made), writer, rate=12_000, n_requests=5, pregenerate=3)
    assert report.ranking == 5 and [key for _, key, _ in writer.raw] == [r.ranking.request_id for r in made[:3]]
    for (topic, _, value), request in zip(writer.raw, made, strict=False):
        sent = decode_ranking(value)
        assert topic == "ranking" and value == encode_checked(dataclasses.replace(request.ranking, ts_ms=sent.ts_ms))
        assert abs(sent.ts_ms - time.time() * 1000) < 5_000
    assert [e.request_id for e in writer.events if isinstance(e, RankingEvent)] == ["req-3", "req-4"]  # made late
