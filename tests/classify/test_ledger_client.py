"""The replica's ledger client sends its spend without waiting, and loses none of it."""

from __future__ import annotations

import numpy as np
import pytest

from gfpipe.classify import replica
from gfpipe.classify.replica import LedgerClient


class Reply:
    """An answer the test releases when it chooses (a report still in flight until then)."""

    def __init__(self, thresholds: list[float]) -> None:
        self.thresholds = thresholds
        self.ready = False


class FakeLedger:
    """Records every report; each reply carries thresholds that tell the reports apart."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, str, object, bool]] = []
        self.replies: list[Reply] = []
        self.report = self  # ledger.report.remote(...)

    def remote(self, call, attempt, report, final):
        self.reports.append((call, attempt, report, final))
        reply = Reply([float(len(self.reports))] * 3)
        self.replies.append(reply)
        return reply


@pytest.fixture
def ledger(monkeypatch):
    def get(reply):
        reply.ready = True  # ray.get waits for it
        return reply.thresholds

    monkeypatch.setattr(replica, "_ready", lambda reply: reply.ready)
    monkeypatch.setattr(replica, "_get", get)
    return FakeLedger()


def client_for(ledger, sync_images=4):
    client = LedgerClient(ledger, "call", 3, 0.0, 0, sync_images, np.array([9.0, 9.0, 9.0]))
    client.keys = [f"k{i}" for i in range(100)]
    return client


def test_reports_go_out_at_sync_size_and_their_answers_are_taken_once_they_arrive(ledger):
    client = client_for(ledger)
    client.admit(range(10))
    assert client.record(np.array([1, 1, 1])).tolist() == [9.0] * 3
    assert ledger.reports == []  # 3 of 4 images: nothing sent yet
    assert client.record(np.array([2])).tolist() == [9.0] * 3  # the 4th: sent, not answered yet
    assert len(ledger.reports) == 1 and ledger.reports[0][3] is False
    assert ledger.reports[0][2].exits.tolist() == [3, 1, 0]
    assert ledger.reports[0][2].admitted == 10

    client.record(np.array([3, 3, 3, 3, 3]))  # 5 more while the first is in flight: kept back
    assert len(ledger.reports) == 1
    ledger.replies[0].ready = True
    assert client.record(np.array([1])).tolist() == [1.0] * 3  # the answer arrived: taken
    assert len(ledger.reports) == 2  # and the 6 images held back go out together
    assert ledger.reports[1][2].exits.tolist() == [1, 0, 5]


def test_finish_waits_for_the_report_in_flight_then_sends_the_rest_as_final(ledger):
    client = client_for(ledger)
    client.admit(range(7))
    client.record(np.array([1, 1, 2, 3]))  # sent, in flight
    client.record(np.array([3, 1, 2]))  # held back
    thresholds = client.finish()
    assert thresholds.tolist() == [2.0] * 3  # the final report's answer
    assert [final for *_, final in ledger.reports] == [False, True]
    assert ledger.replies[0].ready  # waited for before the final went out
    total = sum(report.exits for _, _, report, _ in ledger.reports)
    assert total.tolist() == [3, 2, 2]  # every recorded image reported exactly once
    assert sum(report.admitted for _, _, report, _ in ledger.reports) == 7
    assert {attempt for _, attempt, _, _ in ledger.reports} == {client.attempt}


def test_a_call_starts_from_the_thresholds_it_is_given(ledger):
    client = client_for(ledger)
    assert client.thresholds.tolist() == [9.0] * 3
    assert client.finish().tolist() == [1.0] * 3  # an empty call still reports, as final
    assert ledger.reports[0][2].exits.tolist() == [0, 0, 0]
