"""InboxConsumer against a real nats-server and Postgres: effects exactly once, failures
isolated and redelivered on schedule, bounded concurrency, graceful stop, one inbox
statement per batch, metrics and traces."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry.trace import NoOpTracer, SpanKind
from yardarm_kit import Metrics, ServiceSettings
from yardarm_kit.consumer import (
    ConsumerConfigError,
    ConsumerMetrics,
    Delivery,
    InboxConsumer,
)
from yardarm_kit.messaging import Envelope, connect, ensure_streams
from yardarm_kit.pull import BatchFetcher

from tests.kit.consumer_rig import SCHEMA, PrivateNats, Recorder, Rig, rig, statements, wait_until

__all__ = ["rig"]  # the fixture, imported for pytest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def settled(r: Rig, durable: str) -> bool:
    info = await r.js.consumer_info("COMMANDS", durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_duplicates_under_new_msg_ids_take_effect_once(rig: Rig) -> None:
    handler = Recorder()
    consumer = rig.consumer(handler, batch=16)
    # Same envelope id, different Nats-Msg-Id: JetStream stores both; one batch has both.
    await rig.send("x", msg_id="x-1", headers={"traceparent": TRACEPARENT})
    await rig.send("x", msg_id="x-2")
    await rig.send("y")
    await consumer.start()
    await wait_until(lambda: settled(rig, consumer.durable), what="first batch settled")
    await rig.send("x", msg_id="x-3")  # a later batch: the inbox already holds x
    await wait_until(
        lambda: rig.metric("yardarm_consumer_messages_total", outcome="duplicate") == 2,
        what="two duplicates",
    )
    await wait_until(lambda: settled(rig, consumer.durable), what="all acked")
    assert await rig.effects() == [("x", 1), ("y", 1)]
    assert await rig.inbox() == {"x", "y"}
    assert sorted(handler.committed[0]) == ["x", "y"] and len(handler.committed) == 1
    assert rig.metric("yardarm_consumer_messages_total", outcome="processed") == 2
    assert rig.metric("yardarm_consumer_messages_total", outcome="failed") == 0
    # One CONSUMER span per delivery; the first continues the producer's trace, and the
    # traceparent current in apply (what a reply would carry) is in that trace too.
    spans = [s for s in rig.spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(spans) == 4
    outcomes = sorted(str((s.attributes or {})["yardarm.consumer.outcome"]) for s in spans)
    assert outcomes == ["duplicate", "duplicate", "processed", "processed"]
    assert any(f"{s.context.trace_id:032x}" == TRACE_ID for s in spans)
    stored = await rig.pool.fetchval("SELECT traceparent FROM effects WHERE msg_id = 'x'")
    assert stored.split("-")[1] == TRACE_ID


async def test_without_a_valid_traceparent_a_message_starts_its_own_trace(rig: Rig) -> None:
    handler = Recorder()
    consumer = rig.consumer(handler)
    await rig.send("bare")
    await rig.send("zeros", headers={"traceparent": f"00-{'0' * 32}-{'0' * 16}-01"})
    with rig.provider.get_tracer("test").start_as_current_span("service start"):
        await consumer.start()  # its current span must not adopt the messages
    await wait_until(lambda: settled(rig, consumer.durable), what="both settled")
    spans = [s for s in rig.spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(spans) == 2 and all(s.parent is None for s in spans)
    assert len({s.context.trace_id for s in spans}) == 2


async def test_copies_in_concurrent_batches_take_effect_once(rig: Rig) -> None:
    handler = Recorder(prepare_delay_s=0.05)
    consumer = rig.consumer(handler, batch=1, max_batches_in_flight=2)
    for n in range(8):
        await rig.send("z", msg_id=f"z-{n}")
    await consumer.start()
    await wait_until(
        lambda: rig.metric("yardarm_consumer_messages_total") == 8, what="eight verdicts"
    )
    assert await rig.effects() == [("z", 1)]
    assert rig.metric("yardarm_consumer_messages_total", outcome="duplicate") == 7
    assert handler.most_preparing == 2  # two batches really were in flight together


async def test_a_failing_apply_rolls_back_only_itself_and_returns_after_its_backoff(
    rig: Rig,
) -> None:
    handler = Recorder(fail_apply={"b": 1})
    consumer = rig.consumer(handler, backoff_s=(0.6, 5.0))
    for key in ("a", "b", "c"):
        await rig.send(key)
    await consumer.start()
    await wait_until(lambda: len(handler.committed) == 2, what="b applied on its 2nd delivery")
    await wait_until(lambda: settled(rig, consumer.durable), what="all acked")
    # b wrote a row before failing: rolled back with its inbox row; a and c committed.
    assert await rig.effects() == [("a", 1), ("b", 2), ("c", 1)]
    assert handler.committed == [["a", "c"], ["b"]]
    failed_at = next(t for key, n, t in handler.applied if key == "b" and n == 1)
    retried_at = next(t for key, n, t in handler.applied if key == "b" and n == 2)
    assert 0.6 * 0.9 <= retried_at - failed_at < 5.0  # the first step of backoff_s
    assert rig.metric("yardarm_consumer_messages_total", outcome="failed") == 1
    assert rig.metric("yardarm_consumer_redeliveries_total") == 1
    failed_spans = [
        s for s in rig.spans.get_finished_spans()
        if (s.attributes or {}).get("yardarm.consumer.outcome") == "failed"
    ]  # fmt: skip
    assert len(failed_spans) == 1 and "boom" in (failed_spans[0].status.description or "")


async def test_one_inbox_statement_per_transaction_and_a_retry_only_after_a_failure(
    rig: Rig,
) -> None:
    handler = Recorder()
    consumer = rig.consumer(handler, batch=8, max_batches_in_flight=1)
    for n in range(20):
        await rig.send(f"m{n:02}")
    await consumer.start()
    await wait_until(lambda: settled(rig, consumer.durable), what="20 messages settled")
    batches = rig.metric("yardarm_consumer_batch_duration_seconds_count")
    assert batches >= 3  # 20 messages in batches of at most 8
    assert statements("INSERT") == statements("BEGIN") == batches
    assert statements("DELETE") == 0 and statements("SAVEPOINT") == 0
    # A batch where one apply fails: the batch runs once more, without the failed one,
    # a savepoint per apply; still one inbox statement per transaction.
    handler.fail_apply = {"n1": 1}
    before_insert, before_begin = statements("INSERT"), statements("BEGIN")
    await consumer.stop()
    for key in ("n0", "n1", "n2"):
        await rig.send(key)
    await consumer.start()
    await wait_until(lambda: settled(rig, consumer.durable), what="retried batch settled")
    assert statements("INSERT") - before_insert == statements("BEGIN") - before_begin == 3
    assert statements("SAVEPOINT") == 2  # n0 and n2 in the second pass
    assert len(await rig.effects()) == 23


async def test_the_last_failed_delivery_is_dead_lettered_whole_and_acked(rig: Rig) -> None:
    handler = Recorder(fail_apply={"d": 99})
    consumer = rig.consumer(handler, max_deliver=3, backoff_s=(0.1, 0.2))
    headers = {"traceparent": TRACEPARENT, "x-tenant": "acme"}
    seq = await rig.send("d", msg_id="d-original", headers=headers, schema="2")
    await consumer.start()
    await wait_until(lambda: rig.dead_letter(), what="the dead letter")
    dead = await rig.dead_letter()
    assert dead.headers["traceparent"] == TRACEPARENT
    assert dead.headers["yardarm-schema"] == "2" and dead.headers["x-tenant"] == "acme"
    assert dead.headers["Nats-Msg-Id"] == f"dlq:COMMANDS:{seq}"
    assert dead.headers["yardarm-dlq-msg-id"] == "d-original"
    assert "boom: d cannot be applied" in dead.headers["yardarm-dlq-reason"]
    assert dead.headers["yardarm-dlq-deliveries"] == "3"
    assert dead.headers["yardarm-dlq-stream-seq"] == str(seq)
    assert dead.headers["yardarm-dlq-consumer"] == consumer.durable
    assert dead.headers["yardarm-dlq-subject"] == rig.subject
    assert b'"id":"d"' in dead.data
    await wait_until(lambda: settled(rig, consumer.durable), what="the original acked")
    await asyncio.sleep(0.5)  # longer than any backoff step: nothing comes back
    assert [n for key, n, _ in handler.applied] == [1, 2, 3]
    assert await rig.effects() == [] and await rig.inbox() == set()
    assert rig.metric("yardarm_consumer_messages_total", outcome="dead_lettered") == 1
    assert rig.metric("yardarm_consumer_dead_letters_total", subject=rig.subject) == 1
    assert await rig.dead_letter_count() == 1


async def test_unsupported_schema_and_invalid_envelope_are_dead_lettered(rig: Rig) -> None:
    handler = Recorder()
    consumer = rig.consumer(handler, max_deliver=2, backoff_s=(0.1,))
    await rig.send("future", schema="3")
    await rig.send("junk", body=b'{"type": "kit.test"}')
    await rig.send("plain", schema=None)  # no header: schema 1, accepted
    await consumer.start()
    await wait_until(
        lambda: rig.metric("yardarm_consumer_dead_letters_total") == 2, what="two dead letters"
    )
    info = await rig.js.stream_info("DLQ", subjects_filter=f"dlq.{rig.subject}")
    first = (info.state.last_seq or 0) - 1
    reasons = set()
    for seq in (first, first + 1):
        headers = (await rig.js.get_msg("DLQ", seq)).headers or {}
        reasons.add(headers["yardarm-dlq-reason"])
        assert headers["yardarm-dlq-deliveries"] == "2"
    assert "unsupported schema 3 (accepts 1, 2)" in reasons
    assert any(r.startswith("invalid envelope: id: Field required") for r in reasons)
    assert [key for key, _ in handler.prepared] == ["plain"]  # the others never got this far
    assert await rig.effects() == [("plain", 1)]


def _prepared_once(handler: Recorder) -> bool:
    return len(handler.prepared) == 1


async def test_a_message_that_kills_every_consumer_is_dead_lettered_by_the_advisory(
    rig: Rig,
) -> None:
    options = {"ack_wait_s": 1.0, "max_deliver": 2, "durable": "crash"}
    for attempt in (1, 2):  # two processes take it and die without a verdict
        stuck = Recorder(hang_prepare=asyncio.Event())
        nc, js = await rig.connection()
        doomed = rig.consumer(stuck, js=js, **options)  # type: ignore[arg-type]
        await doomed.start()
        if attempt == 1:
            seq = await rig.send("poison")
        await wait_until(partial(_prepared_once, stuck), what=f"delivery {attempt}")
        assert stuck.prepared == [("poison", attempt)]
        await nc.close()  # the process dies: no ack, no nak
        await doomed.stop(grace_s=0.0)
    healthy = Recorder()
    survivor = rig.consumer(healthy, **options)  # type: ignore[arg-type]
    await survivor.start()
    await wait_until(lambda: rig.dead_letter(), what="the advisory's dead letter")
    dead = await rig.dead_letter()
    assert dead.headers["yardarm-dlq-reason"].startswith("max deliveries reached without")
    assert dead.headers["yardarm-dlq-stream-seq"] == str(seq)
    assert dead.headers["yardarm-dlq-deliveries"] == "2"
    assert healthy.prepared == []  # out of deliveries: JetStream never hands it out again
    assert rig.metric("yardarm_consumer_dead_letters_total") == 1


async def test_concurrency_is_bounded_by_batch_and_batches_in_flight(rig: Rig) -> None:
    handler = Recorder(prepare_delay_s=0.1, apply_delay_s=0.005)
    consumer = rig.consumer(handler, batch=4, max_batches_in_flight=2)
    in_flight: list[float] = []
    handler.on_commit = lambda: in_flight.append(
        rig.metric("yardarm_consumer_in_flight", consumer=consumer.durable)
    )
    await consumer.start()
    info = await rig.js.consumer_info("COMMANDS", consumer.durable)
    assert info.config.max_ack_pending == 8  # the server holds the same bound
    # Lift the server's bound (as another version's replica might): ours still holds.
    info.config.max_ack_pending = 1000
    await rig.js.add_consumer("COMMANDS", info.config)
    for n in range(40):
        await rig.send(f"c{n:02}")
    await wait_until(lambda: settled(rig, consumer.durable), what="40 messages settled")
    assert len(await rig.effects()) == 40
    assert 4 < handler.most_preparing <= 8  # both batches prepare at once, no more
    assert handler.most_applying <= 2  # applies of a batch run one by one
    assert max(in_flight) <= 8


class NothingToPrepare(Recorder):
    prepares = False

    async def prepare(self, delivery: Delivery) -> None:
        raise AssertionError("a handler with prepares = False is never prepared")


async def test_a_handler_with_nothing_to_prepare_still_applies_and_traces_each_delivery(
    rig: Rig,
) -> None:
    handler = NothingToPrepare()
    consumer = rig.consumer(handler, batch=8)
    for n in range(20):
        await rig.send(f"n{n:02}", headers={"traceparent": TRACEPARENT})
    await consumer.start()
    await wait_until(lambda: settled(rig, consumer.durable), what="20 messages settled")
    assert sorted(key for key, _ in await rig.effects()) == [f"n{n:02}" for n in range(20)]
    spans = [s for s in rig.spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(spans) == 20
    assert all(f"{s.context.trace_id:032x}" == TRACE_ID for s in spans)
    # apply still ran with its delivery's span current
    traceparents = await rig.pool.fetch("SELECT traceparent FROM effects")
    assert {row[0].split("-")[2] for row in traceparents} == {
        f"{s.context.span_id:016x}" for s in spans
    }


async def test_an_unsampled_producer_trace_records_no_span_but_still_propagates(
    rig: Rig,
) -> None:
    handler = Recorder()
    consumer = rig.consumer(handler)
    unsampled = f"00-{TRACE_ID}-00f067aa0ba902b7-00"
    await rig.send("quiet", headers={"traceparent": unsampled})
    await rig.send("loud", headers={"traceparent": TRACEPARENT})
    await consumer.start()
    await wait_until(lambda: settled(rig, consumer.durable), what="both settled")
    assert sorted(key for key, _ in await rig.effects()) == ["loud", "quiet"]
    spans = [s for s in rig.spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert [(s.attributes or {})["messaging.message.id"] for s in spans] == ["loud"]
    # What apply sends on continues the producer's trace, unsampled, from a span of its own.
    stored = await rig.pool.fetchval("SELECT traceparent FROM effects WHERE msg_id = 'quiet'")
    _, trace_id, span_id, flags = stored.split("-")
    assert (trace_id, flags) == (TRACE_ID, "00") and span_id not in ("00f067aa0ba902b7", "0" * 16)


async def test_messages_for_an_abandoned_pull_go_back_at_once(rig: Rig) -> None:
    durable = f"pull{rig.subject.split('.')[1]}"
    rig.durables.add(durable)
    await rig.js.add_consumer("COMMANDS", ConsumerConfig(
        name=durable, durable_name=durable, filter_subject=rig.subject, ack_wait=30.0))  # fmt: skip
    fetcher = BatchFetcher(rig.nc, "COMMANDS", durable)
    await fetcher.start()
    try:
        waiting = asyncio.create_task(fetcher.fetch(5, 5.0))
        await asyncio.sleep(0.2)
        waiting.cancel()  # the request stays on the server until it expires
        await asyncio.sleep(0.1)
        await rig.send("late")  # delivered to the abandoned request...
        await asyncio.sleep(0.5)  # ...while no fetch waits (else the next one would take it)
        started = time.monotonic()
        msgs: list[Any] = []
        while not msgs and time.monotonic() - started < 5.0:
            msgs = await fetcher.fetch(5, 1.0)
        assert [m.metadata.num_delivered for m in msgs] == [2]  # nak'ed, not held 30 s
    finally:
        await fetcher.close()


async def test_stop_lets_the_batch_in_hand_finish(rig: Rig) -> None:
    handler = Recorder(apply_delay_s=0.3)
    consumer = rig.consumer(handler)
    await rig.send("slow")
    await consumer.start()
    await wait_until(lambda: len(handler.applied) == 1, what="apply started")
    await consumer.stop(grace_s=5.0)
    assert handler.committed == [["slow"]]  # before stop() returned
    assert await rig.effects() == [("slow", 1)]
    await wait_until(lambda: settled(rig, consumer.durable), timeout=5.0, what="acked")


async def test_a_stop_out_of_grace_rolls_back_and_hands_messages_over_at_once(
    rig: Rig,
) -> None:
    stuck = Recorder(hang_apply=asyncio.Event())  # writes, then waits inside the transaction
    first = rig.consumer(stuck, ack_wait_s=30.0)
    for key in ("h1", "h2"):
        await rig.send(key)
    await first.start()
    await wait_until(lambda: len(stuck.applied) == 1, what="first apply hanging")
    await first.stop(grace_s=0.2)
    second = Recorder()
    takeover = rig.consumer(second, ack_wait_s=30.0)
    started = time.monotonic()
    await takeover.start()
    await wait_until(lambda: len(second.committed) >= 1 and settled(rig, takeover.durable),
                     timeout=10.0, what="the second consumer took over")  # fmt: skip
    assert time.monotonic() - started < 10.0  # far sooner than the 30 s ack wait
    assert await rig.effects() == [("h1", 2), ("h2", 2)]  # the first one's write rolled back


async def test_lag_drops_to_zero_once_drained(rig: Rig) -> None:
    handler = Recorder()
    consumer = rig.consumer(handler, batch=5, max_batches_in_flight=1)
    lags: list[float] = []
    handler.on_commit = lambda: lags.append(
        rig.metric("yardarm_consumer_lag", consumer=consumer.durable)
    )
    for n in range(20):
        await rig.send(f"l{n:02}")
    await consumer.start()
    await wait_until(lambda: settled(rig, consumer.durable), what="drained")
    assert rig.metric("yardarm_consumer_lag", consumer=consumer.durable) == 0
    assert max(lags) > 0  # it did see a backlog on the way


async def test_a_deleted_durable_is_recreated_and_replays_only_as_duplicates(rig: Rig) -> None:
    handler = Recorder()
    consumer = rig.consumer(handler)
    await rig.send("first")
    await consumer.start()
    await wait_until(lambda: handler.committed == [["first"]], what="first applied")
    await rig.js.delete_consumer("COMMANDS", consumer.durable)
    await rig.send("second")
    await wait_until(lambda: ["second"] in handler.committed, timeout=15.0,
                     what="consumed again after the durable was recreated")  # fmt: skip
    assert await rig.effects() == [("first", 1), ("second", 1)]  # "first" came back: a duplicate
    await wait_until(
        lambda: rig.metric("yardarm_consumer_messages_total", outcome="duplicate") == 1,
        what="the replayed first message counted as a duplicate",
    )


async def test_start_updates_an_existing_durable_to_its_config(rig: Rig) -> None:
    consumer = rig.consumer(Recorder(), ack_wait_s=7.0, max_deliver=4, batch=8)
    await rig.js.add_consumer(
        "COMMANDS",
        ConsumerConfig(name=consumer.durable, durable_name=consumer.durable, ack_wait=5,
                       max_deliver=9, backoff=[1.0, 2.0], max_ack_pending=1000,
                       filter_subject=rig.subject),
    )  # fmt: skip
    await consumer.start()
    info = await rig.js.consumer_info("COMMANDS", consumer.durable)
    assert info.config.ack_wait == 7.0 and not info.config.backoff
    assert info.config.max_deliver == 4 and info.config.max_ack_pending == 16
    await consumer.stop()
    await rig.js.delete_consumer("COMMANDS", consumer.durable)
    await rig.js.add_consumer(
        "COMMANDS",
        ConsumerConfig(name=consumer.durable, durable_name=consumer.durable,
                       ack_policy=AckPolicy.ALL, filter_subject=rig.subject),
    )  # fmt: skip
    with pytest.raises(ConsumerConfigError, match="nats consumer rm COMMANDS"):
        await consumer.start()


async def test_inbox_rows_past_the_retention_are_pruned(rig: Rig) -> None:
    await rig.pool.execute(
        "INSERT INTO inbox (msg_id, subject, processed_at) VALUES"
        " ('old-1', 's', now() - interval '2 hours'), ('old-2', 's', now() - interval '3 days'),"
        " ('recent', 's', now() - interval '10 minutes')"
    )
    consumer = rig.consumer(Recorder(), inbox_retention_s=3600.0)
    await consumer.start()  # prunes at once, then every minute
    await wait_until(lambda: _inbox_is(rig, {"recent"}), timeout=10.0, what="old rows pruned")


async def _inbox_is(r: Rig, wanted: set[str]) -> bool:
    return await r.inbox() == wanted


async def test_consuming_goes_on_across_a_nats_server_restart(
    pg_database: str, tmp_path: Path
) -> None:
    server = PrivateNats(tmp_path / "nats")
    server.start()
    nc, js = await connect(server.url, "kit-consumer-restart")
    pool = await asyncpg.create_pool(pg_database, min_size=1, max_size=4)
    await pool.execute(SCHEMA)
    handler = Recorder()
    consumer = InboxConsumer(
        js, pool, handler=handler, tracer=NoOpTracer(), log=logging.getLogger("t"),
        metrics=ConsumerMetrics(Metrics(ServiceSettings(service="t", port=8080))),
        stream="COMMANDS", durable="restart", filter_subject="cmd.restart.>",
    )  # fmt: skip
    try:
        await ensure_streams(js)
        await consumer.start()
        await _publish(js, "before")
        await wait_until(lambda: handler.committed == [["before"]], what="before the restart")
        server.stop()
        await asyncio.sleep(1.5)  # fetches fail or go unanswered while it is gone
        server.start()
        await wait_until(lambda: _publish(js, "after"), timeout=30.0, what="publishing again")
        await wait_until(lambda: ["after"] in handler.committed, timeout=30.0,
                         what="consumed after the restart")  # fmt: skip
        rows = await pool.fetch("SELECT msg_id FROM effects ORDER BY msg_id")
        assert [row["msg_id"] for row in rows] == ["after", "before"]
    finally:
        await consumer.stop(grace_s=1.0)
        await nc.close()
        await pool.close()
        server.stop()


async def _publish(js: Any, key: str) -> bool:
    envelope = Envelope(type="t", id=key, saga_id="s")
    try:
        await js.publish("cmd.restart.do", envelope.model_dump_json().encode(),
                         headers={"Nats-Msg-Id": key})  # fmt: skip
    except Exception:
        return False
    return True
