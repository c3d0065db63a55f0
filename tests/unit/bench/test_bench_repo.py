"""``bench repo``'s summary: the first attempts' fate is read off every record's attempts."""

from __future__ import annotations

from cathrepo.bench.repo import first_attempts, summarize


def _attempt(passed: bool, failed: tuple[str, ...] = (), retry: str | None = None, compute: float = 3.0) -> dict:
    attempt = {"passed": passed, "failed": [{"gate": g} for g in failed],
               "seconds": {"probes": 0.5, "compute": compute, "gates": 7.0}}
    return {**attempt, "retry": retry} if retry else attempt


def _row(index: int, status: str, wall: float, *attempts: dict) -> dict:
    row = {"index": index, "status": status, "wall_s": wall, "failed_gates": []}
    return {**row, "attempts": list(attempts)} if attempts else row


def test_first_attempts_count_refusals_retry_wins_and_the_cost_of_an_edit_without_retries():
    rows = [
        _row(0, "committed", 11.0, _attempt(True, compute=2.0)),
        _row(1, "committed", 13.0, _attempt(True, compute=4.0)),
        _row(2, "committed", 25.0, _attempt(False, ("cfplus",)), _attempt(True, retry="capped")),
        _row(3, "committed", 40.0, _attempt(False, ("fluency", "generation")), _attempt(False, ("fluency",), "adam"),
             _attempt(True, retry="layer 3")),
        _row(4, "refused", 90.0, _attempt(False, ("cfplus",)), _attempt(False, ("cfplus",), "capped")),
        _row(5, "error", 1.0),  # no attempts: left out
    ]
    got = first_attempts(rows)
    assert got["first_attempt_passed"] == 2
    assert got["first_attempt_refusals_by_gate"] == {"cfplus": 2, "fluency": 1, "generation": 1}
    assert got["won_by_retry"] == {"capped": 1, "layer": 1}
    assert got["first_attempt_wall_median_s"] == 12.0
    assert got["first_attempt_seconds_median"] == {"probes": 0.5, "compute": 3.0, "gates": 7.0}
    summary = summarize(rows)
    assert summary["committed"] == 4 and summary["first_attempt_passed"] == 2 and summary["wall_median_s"] == 19.0


def test_no_first_attempt_passed_gives_no_median():
    got = first_attempts([_row(0, "refused", 50.0, _attempt(False, ("retention",)))])
    assert got["first_attempt_passed"] == 0 and got["first_attempt_wall_median_s"] is None
    assert got["first_attempt_seconds_median"] == {"probes": None, "compute": None, "gates": None}
    assert first_attempts([])["won_by_retry"] == {}
