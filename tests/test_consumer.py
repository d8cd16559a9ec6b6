"""The reference consumer: CLI and Function against Azurite and a real PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import psycopg
import pytest
from azure.functions import QueueMessage

import functions.consume
from devtools.simulate import generate_rows
from function_app import create_app
from shared.config import ConsumerSettings
from shared.consumer import Consumer, drain
from shared.errors import TransientError
from shared.ingest import ingest_metadata_blob
from tests.conftest import Relay
from tests.consumerkit import (
    PUBLISHED,
    PackedDrop,
    audit,
    drop_status,
    person_rows,
    published,
    put,
    until_every_message_is_visible,
)
from viva_relay.cli.main import main


def settings_for(relay: Relay, url: str, **extra: str) -> ConsumerSettings:
    return ConsumerSettings.from_env(relay.env | {"CONSUMER_DATABASE_URL": url, **extra})


def consume_once(relay: Relay, url: str) -> None:
    consumer = Consumer(settings_for(relay, url))
    consumer.migrate()
    drain(consumer, relay.rt.queue)
    consumer.close()


def typed(rows: list[bytes]) -> list[bytes]:
    """Rows as the relay's ``typed`` transform sends them: numbers and booleans as JSON values."""
    out = []
    for raw in rows:
        row = json.loads(raw)
        for key, value in row.items():
            if isinstance(value, str) and value.lower() in ("true", "false"):
                row[key] = value.lower() == "true"
            elif isinstance(value, str) and key not in ("PersonId", "MetricDate"):
                with contextlib.suppress(ValueError):
                    row[key] = float(value) if "." in value else int(value)
        out.append(json.dumps(row).encode())
    return out


def test_relay_drop_through_cli_into_postgres(
    relay: Relay, consumer_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=400)
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "delivered"
    for key, value in (relay.env | {"CONSUMER_DATABASE_URL": consumer_db}).items():
        monkeypatch.setenv(key, value)
    assert main(["consume", "--once"]) == 3  # no migrations yet: a clear configuration error
    assert "consume --migrate" in capsys.readouterr().err
    assert main(["consume", "--once", "--migrate", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["published_rows"] == 400 and summary["duplicates"] == 0 and summary["poisoned"] == 0
    audit(consumer_db, list(generate_rows(400)), tenant=tenant, case="relay drop via viva-relay consume")
    assert relay.rt.queue.peek_messages() == []  # every message acknowledged


def test_consumer_function_is_indexed_only_with_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUMER_DATABASE_URL", raising=False)
    assert "consume_rows" not in {f.get_function_name() for f in create_app().get_functions()}
    monkeypatch.setenv("CONSUMER_DATABASE_URL", "host=127.0.0.1 dbname=relay")
    [fn] = [f for f in create_app().get_functions() if f.get_function_name() == "consume_rows"]
    [binding] = json.loads(fn.get_function_json())["bindings"]
    assert binding["type"] == "queueTrigger"
    assert binding["queueName"] == "%DOWNSTREAM_QUEUE%"
    assert binding["connection"] == "RelayStorage"


def test_consumer_function_applies_what_the_host_hands_over(consumer_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUMER_DATABASE_URL", consumer_db)
    monkeypatch.setattr(functions.consume, "_consumer", None)
    drop = PackedDrop(person_rows(10, [0, 1], "a"), encoding="gzip-base64")
    import base64

    consume_rows = functions.consume.consume_rows
    for payload in reversed(drop.all()):  # the host Base64-decodes: the function gets gzip bytes
        consume_rows(QueueMessage(body=base64.b64decode(payload)))
    consume_rows(QueueMessage(body=base64.b64decode(drop.messages[0])))  # a redelivery
    functions.consume.get_consumer().close()
    audit(consumer_db, drop.rows, tenant=drop.tenant, case="function consume_rows")


def test_bad_messages_go_to_poison_and_processing_goes_on(relay: Relay, consumer_db: str) -> None:
    drop = PackedDrop(person_rows(10, [0], "a"))
    other = json.loads(drop.messages[0]) | {"v": 2}
    beyond = json.loads(drop.messages[0]) | {"seq": len(drop.messages) + 3}
    nul = json.loads(PackedDrop([b'{"PersonId":"x\\u0000y"}']).messages[0])  # PostgreSQL's JSONB refuses \u0000
    lone = PackedDrop([b'{"PersonId":"x\\ud800y"}']).messages[0]  # so does it a lone surrogate
    put(
        relay.rt.queue,
        ["not base64 at all!", json.dumps(other), *drop.all(), json.dumps(beyond), json.dumps(nul), lone],
    )
    consume_once(relay, consumer_db)
    with psycopg.connect(consumer_db) as conn:
        reasons = sorted(r[0] for r in conn.execute("SELECT reason FROM viva_relay.poison"))
    assert len(reasons) == 5
    assert reasons[0].startswith("a value holds \\u0000")
    assert reasons[1].startswith("refused by PostgreSQL")
    assert "beyond the drop's" in reasons[2]
    assert reasons[3].startswith("undecodable message")
    assert "unknown contract version 2" in reasons[4]
    audit(consumer_db, drop.rows, tenant=drop.tenant, case="poison does not stop the queue")


def test_publish_waits_for_every_seq(relay: Relay, consumer_db: str) -> None:
    drop = PackedDrop(person_rows(10, [0, 1], "a"))
    put(relay.rt.queue, [*drop.messages[1:], drop.complete])
    consume_once(relay, consumer_db)
    assert drop_status(consumer_db, drop.drop) == "complete"
    assert published(consumer_db, drop.tenant) == []  # never half a drop
    put(relay.rt.queue, drop.messages[:1])
    consume_once(relay, consumer_db)
    audit(consumer_db, drop.rows, tenant=drop.tenant, case="published once the last seq arrived")


def test_typed_values_fill_typed_columns(relay: Relay, consumer_db: str) -> None:
    rows = typed(list(generate_rows(60)))
    drop = PackedDrop(rows, limit=16384)
    put(relay.rt.queue, drop.all())
    consume_once(relay, consumer_db)
    with psycopg.connect(consumer_db) as conn:
        columns: dict[str, str] = dict(
            conn.execute(
                "SELECT json_key, column_name FROM viva_relay.dataset_columns WHERE json_key IN"
                " ('Collaboration hours', 'IsActive')"
            ).fetchall()
        )
        assert columns == {"Collaboration hours": "collaboration_hours", "IsActive": "isactive"}
        got = conn.execute(
            f"SELECT collaboration_hours, isactive, data FROM {PUBLISHED} ORDER BY person_id, metric_date"
        ).fetchall()
    assert len(got) == 60
    for hours, active, data in got:
        assert hours == data["Collaboration hours"] and isinstance(hours, float)
        assert active is data["IsActive"]


def test_numbers_as_strings_add_no_typed_column(relay: Relay, consumer_db: str) -> None:
    # Untransformed rows keep numbers as JSON strings; only the JSON boolean IsActive gets a column.
    drop = PackedDrop(list(generate_rows(20)), limit=16384)
    put(relay.rt.queue, drop.all())
    consume_once(relay, consumer_db)
    with psycopg.connect(consumer_db) as conn:
        columns = conn.execute("SELECT json_key, sql_type FROM viva_relay.dataset_columns").fetchall()
    assert columns == [("IsActive", "boolean")]


def test_database_outage_is_transient_and_the_message_comes_back(relay: Relay, consumer_db: str) -> None:
    drop = PackedDrop(person_rows(5, [0], "a"))
    consumer = Consumer(settings_for(relay, consumer_db, CONSUMER_VISIBILITY_TIMEOUT_SECONDS="1"))
    consumer.migrate()
    put(relay.rt.queue, drop.all())
    # The server drops the consumer's session (as a failover or restart would) before the first batch.
    with psycopg.connect(consumer_db, autocommit=True) as admin:
        pid = consumer.connection().info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(TransientError):
        drain(consumer, relay.rt.queue)
    assert published(consumer_db, drop.tenant) == []
    until_every_message_is_visible(relay.rt.queue, within=30)  # nothing was acknowledged: they come back
    report = drain(consumer, relay.rt.queue)  # the next run reconnects
    consumer.close()
    assert report.messages == len(drop.all())
    audit(consumer_db, drop.rows, tenant=drop.tenant, case="database outage, then retried")


def test_unreachable_database_is_transient(relay: Relay, postgres: Any) -> None:
    from devtools.azurite import free_port

    consumer = Consumer(settings_for(relay, f"host=127.0.0.1 port={free_port()} dbname=x user=x"))
    with pytest.raises(TransientError, match="PostgreSQL unreachable"):
        consumer.migrate()


def test_unchanged_value_spelling(relay: Relay, consumer_db: str) -> None:
    # The row text reaches PostgreSQL as sent: a number keeps its digits.
    rows = [b'{"PersonId":"p","MetricDate":"2024-01-07","Hours":12.500000000000000001,"Big":12345678901234567890123}']
    drop = PackedDrop(rows)
    put(relay.rt.queue, drop.all())
    consume_once(relay, consumer_db)
    with psycopg.connect(consumer_db) as conn:
        text = conn.execute(f"SELECT data->>'Hours', data->>'Big' FROM {PUBLISHED}").fetchone()
    assert text == ("12.500000000000000001", "12345678901234567890123")


def test_a_value_postgresql_refuses_at_publish_fails_the_drop_with_the_reason(relay: Relay, consumer_db: str) -> None:
    rows = [*person_rows(3, [0], "a"), b'{"PersonId":"z","MetricDate":"2024-01-07","Note":"\\ud800"}']
    drop = PackedDrop(rows, limit=65536)
    assert len(drop.messages) == 1  # the bad value is not in the first row, which the staging samples
    put(relay.rt.queue, drop.all())
    consume_once(relay, consumer_db)
    with psycopg.connect(consumer_db) as conn:
        status, reason = conn.execute("SELECT status, reason FROM viva_relay.drops").fetchone() or (None, None)
    assert status == "failed" and reason.startswith("publish: ")
    assert published(consumer_db, drop.tenant) == []


def test_a_key_repeated_within_a_drop_keeps_its_last_row(relay: Relay, consumer_db: str) -> None:
    first, again = person_rows(4, [0], "first"), person_rows(4, [0], "again")
    drop = PackedDrop([*first, *person_rows(4, [1], "x"), *again])
    put(relay.rt.queue, drop.all())
    consume_once(relay, consumer_db)
    audit(consumer_db, person_rows(4, [1], "x") + again, tenant=drop.tenant, case="repeated key: last row wins")


def test_worker_mode_keeps_polling_until_stopped(relay: Relay, consumer_db: str) -> None:
    consumer = Consumer(settings_for(relay, consumer_db))
    consumer.migrate()
    drop = PackedDrop(person_rows(5, [0, 1], "a"))
    put(relay.rt.queue, drop.messages)
    polls: list[int] = []

    def stop_after_a_few_polls() -> bool:
        polls.append(1)
        if len(polls) == 3:
            put(relay.rt.queue, [drop.complete])  # the complete message arrives while the worker waits
        return len(polls) > 8

    report = drain(consumer, relay.rt.queue, once=False, poll_seconds=0.05, should_stop=stop_after_a_few_polls)
    consumer.close()
    assert report.messages == len(drop.all())
    audit(consumer_db, drop.rows, tenant=drop.tenant, case="worker mode")


class RecordingCredential:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes += scopes
        return AccessToken("token-of-the-app-identity", int(time.time()) + 3600)


def test_entra_sign_in_sends_the_identity_token_only_over_tls(consumer_db: str) -> None:
    credential = RecordingCredential()
    settings = ConsumerSettings(database_url=consumer_db, entra_auth=True)
    # The local server has no TLS: the token is never sent in the clear, the attempt fails as transient.
    with pytest.raises(TransientError):
        Consumer(settings, credential=credential).migrate()
    assert credential.scopes == ["https://ossrdbms-aad.database.windows.net/.default"]
