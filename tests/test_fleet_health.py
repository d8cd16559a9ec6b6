"""Proof on a simulated fleet: 200 tenants, 6 simulated weeks on Azurite, problems injected on known days.

The clock is a ManualClock moved day by day (no sleeps). Each simulated day at 07:00 the health
check runs exactly as the timer does (collect, evaluate, announce). The test asserts that every
injected problem is announced first on the day it should be, again only once HEALTH_REPEAT_HOURS
passed while it stays open, resolved the day after it goes away, and that nothing else is announced.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

from devtools.azurite import Azurite
from devtools.clock import ManualClock
from devtools.fleet import build_fleet, day, drop_row, parallel, set_key_expiry, weekly_round, write_rows
from shared.alerts import EVENT_PREFIX, PROBLEM, announce, announcement_store
from shared.health import collect, evaluate
from shared.keyfolder import KeyFolder
from shared.tenants import CONSENT_VALID_DAYS, TenantRegistry

from .conftest import FLEET_REPORTS, make_relay

TENANTS = 200
DAYS = 42  # six weeks
REPEAT_HOURS = 72
CHECK_HOUR = 7

Key = tuple[str, str, str]  # (tenant, rule, subject)


class Collect(logging.Handler):
    """Keeps every record logged to it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def expected_days(first: int, last: int) -> list[int]:
    """Announcement days of a problem open from day ``first`` to ``last``: first, then every repeat."""
    step = REPEAT_HOURS // 24
    return list(range(first, last + 1, step))


def test_simulated_fleet_reports_every_injected_problem_on_its_day_and_nothing_else(
    azurite: Azurite, tmp_path: Path
) -> None:
    relay = make_relay(
        azurite,
        tmp_path,
        HEALTH_TABLE=f"health{uuid.uuid4().hex[:10]}",
        HEALTH_REPEAT_HOURS=str(REPEAT_HOURS),
        QUEUE_BACKLOG_ALERT_MESSAGES="50",
        DROP_WAITING_ALERT_HOURS="12",
        RUN_NO_DROP_ALERT_HOURS="24",
        CONSENT_WARN_DAYS="30",
        KEY_WARN_DAYS="30",
    )
    rt = relay.rt
    start: date = day(date.today(), 0).date()
    clock = ManualClock(day(start, -1))
    folder_path = tmp_path / "keys"
    tenants, versions = build_fleet(rt, folder_path, TENANTS, day(start, 0))
    folder = KeyFolder(folder_path)
    registry = TenantRegistry(rt.table(rt.settings.tenant_table))
    t = tenants  # short names for the injected tenants below
    expected: dict[Key, tuple[int, int]] = {}  # problem -> (first open day, last open day)

    # Three consent expiries: expiring in 45 and 60 days, and one that lapses on day 20.
    for tenant, expires_day in ((t[0], 45), (t[1], 60), (t[2], 20)):
        consent = start + timedelta(days=expires_day - CONSENT_VALID_DAYS)
        registry.add(replace(registry.require(tenant), consent_date=consent), replace_existing=True)
        warn_from = max(0, expires_day - 29)  # fewer than 30 days left
        expected[(tenant, "consent_expiring", str(consent))] = (warn_from, min(DAYS - 1, expires_day))
        if expires_day < DAYS - 1:
            expected[(tenant, "consent_expired", str(consent))] = (expires_day + 1, DAYS - 1)
    # Two keys nearing expiry (one of them then expires), one key without an expiry.
    set_key_expiry(folder_path, t[3], versions[t[3]], day(start, 45, 12))
    expected[(t[3], "key_expiring", versions[t[3]])] = (16, DAYS - 1)
    set_key_expiry(folder_path, t[4], versions[t[4]], day(start, 35, 12))
    expected[(t[4], "key_expiring", versions[t[4]])] = (6, 35)
    expected[(t[4], "key_expired", versions[t[4]])] = (36, DAYS - 1)
    set_key_expiry(folder_path, t[5], versions[t[5]], None)
    expected[(t[5], "key_no_expiry", versions[t[5]])] = (0, DAYS - 1)

    backlog = 60
    handler = Collect()
    logger = logging.getLogger(f"test.fleet.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    store = announcement_store(rt)
    announced: dict[Key, list[int]] = defaultdict(list)
    resolved: dict[Key, list[int]] = defaultdict(list)

    for d in range(DAYS):
        if d % 7 == 0:  # the weekly schedule, Mondays 06:00
            week = d // 7
            out = weekly_round(
                rt,
                tenants,
                versions,
                day(start, d, 6),
                run_status={t[6]: "Failed"} if week in (1, 3) else {},
                no_drop=[t[7]] if week == 2 else [],
                drop_state={t[9]: "failed"} if week == 4 else {},
            )
            if week in (1, 3):  # runs failing in two weeks: open until the next week's run
                expected[(t[6], "run_failed", out[t[6]][0])] = (d, d + 6)
            if week == 2:  # a succeeded run without a drop: flagged 24 h after it ended
                expected[(t[7], "run_no_drop", out[t[7]][0])] = (d + 1, d + 6)
            if week == 4:  # a failed drop of the weekly run
                expected[(t[9], "drop_failed", out[t[9]][1])] = (d, DAYS - 1)
        if d == 9:  # a second failed drop, before the morning check
            failed_id = uuid.uuid4().hex
            write_rows(rt, rt.settings.ledger_table, [drop_row(t[8], failed_id, "failed", day(start, 9, 3))])
            expected[(t[8], "drop_failed", failed_id)] = (9, DAYS - 1)

        clock.set(day(start, d, CHECK_HOUR))
        snapshot = collect(rt, clock, keys=lambda: (folder.inventory(), folder.describe()))
        health = evaluate(snapshot, rt.settings)
        assert len(health.tenants) == TENANTS
        result = announce(health.problems, store, REPEAT_HOURS, clock, logger)
        for p in result.announced:
            announced[(p.tenant, p.rule, p.subject)].append(d)
        for p in result.resolved:
            resolved[(p.tenant, p.rule, p.subject)].append(d)

        if d == 30:  # a drop left waiting (its data file never completes)
            waiting_id = uuid.uuid4().hex
            row = drop_row(t[10], waiting_id, "waiting", day(start, 30, 10), reason="data file still being written")
            write_rows(rt, rt.settings.ledger_table, [row])
            expected[(t[10], "drop_waiting", waiting_id)] = (31, DAYS - 1)
        if d == 35:  # the consumer stops: a backlog builds up
            parallel(lambda i: rt.queue.send_message(f"row batch {i}"), range(backlog))
            expected[("", "queue_backlog", rt.settings.downstream_queue)] = (36, 39)
        if d == 39:  # and catches up again
            rt.queue.clear_messages()

    # Every injected problem: announced on its first day, again only after the repeat window.
    for key, (first, last) in expected.items():
        assert announced.get(key, [])[:1] == [first], f"{key}: first announced {announced.get(key)}, expected {first}"
        assert announced[key] == expected_days(first, last), f"{key}: announced on {announced[key]}"
        assert resolved.get(key, []) == ([last + 1] if last + 1 < DAYS else []), f"{key}: resolved {resolved.get(key)}"
    # None announced twice within the repeat window.
    for key, days in announced.items():
        gaps = [b - a for a, b in itertools.pairwise(days)]
        assert all(g * 24 >= REPEAT_HOURS for g in gaps), f"{key} announced again within {REPEAT_HOURS} h: {days}"
    # Nothing reported that was not injected.
    false_alarms = sorted(set(announced) - set(expected))
    missed = sorted(set(expected) - set(announced))
    assert false_alarms == []
    assert missed == []

    # The events are structured: the fields as extra attributes and as JSON in the message.
    events = [r for r in handler.records if r.getMessage().startswith(EVENT_PREFIX)]
    problems_logged = [r for r in events if r.__dict__.get("health_event") == PROBLEM]
    assert len(problems_logged) == sum(len(v) for v in announced.values())
    for record in events:
        fields = json.loads(record.getMessage()[len(EVENT_PREFIX) :])
        assert fields["health_rule"] == record.__dict__["health_rule"]
        assert {"health_tenant", "health_severity", "health_advice", "health_subject"} <= set(fields)

    FLEET_REPORTS.append(
        f"fleet of {TENANTS} tenants over {DAYS} simulated days: injected {len(expected)} problems,"
        f" reported {len(set(announced) & set(expected))}, false alarms {len(false_alarms)}, missed {len(missed)};"
        f" {len(problems_logged)} announcements (repeats every {REPEAT_HOURS} h while open),"
        f" {sum(len(v) for v in resolved.values())} resolved"
    )
