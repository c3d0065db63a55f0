"""GateResult/GateReport: JSON round trip, trailers, Markdown and HTML rendering."""

from __future__ import annotations

from cathrepo.gates.results import GateReport, GateResult

REPORT = GateReport(
    (
        GateResult("efficacy", True, {"es": 1.0, "em": 0.42}, {"efficacy_min": 1.0}, seconds=0.5),
        GateResult("regression", False, {"broken_rewrite": 1.0}, {"regression_max_broken_rewrite": 0.0},
                   "broke: edit 0 (X) rewrite 'a|b' -> 'c'"),
        GateResult("mmlu", True, detail="no probes", skipped=True),
    ),
    stage="edit",
)


def test_json_round_trip():
    again = GateReport.from_json(REPORT.to_json())
    assert again == REPORT
    assert not again.passed
    assert [r.name for r in again.failures] == ["regression"]
    assert again["efficacy"].metrics["es"] == 1.0


def test_trailers_name_every_gate():
    trailers = REPORT.trailers()
    assert list(trailers)[0] == "Cathrepo-Gates" and trailers["Cathrepo-Gates"] == "FAIL (1/2)"
    assert trailers["Cathrepo-Gate-Efficacy"] == "pass es=1 em=0.42"
    assert trailers["Cathrepo-Gate-Mmlu"] == "skip"
    assert REPORT.trailers(per_gate=False, forced=True) == {"Cathrepo-Gates": "FAIL (forced) (1/2)"}


def test_markdown_and_html():
    md = REPORT.to_markdown()
    assert "## Gates (edit): FAILED" in md
    assert "| regression | FAIL |" in md
    assert "a\\|b" in md  # a pipe inside a cell is escaped
    html = REPORT.to_html()
    assert '<tr class="fail"><td>regression</td>' in html
    assert "&#x27;a|b&#x27;" in html


def test_a_gate_a_fail_fast_run_did_not_run_keeps_that_through_json():
    report = GateReport((GateResult("fluency", True, detail="not run: a cheaper gate already refused this attempt",
                                    skipped=True, not_run=True),), stage="edit")
    again = GateReport.from_json(report.to_json())
    assert again == report and again["fluency"].not_run
    assert "not_run" not in GateReport.from_json(REPORT.to_json()).to_dict()["results"][0]


def test_outcome_numbers_read_back_a_trailer():
    from cathrepo.gates.results import GateReport, GateResult, outcome_numbers, trailer_key

    assert outcome_numbers("pass ppl=25.72 growth=0.004 x=abc") == {"ppl": 25.72, "growth": 0.004}
    assert outcome_numbers("skip") == {} and outcome_numbers("") == {}
    result = GateResult("forget_rank", True, {"out_of_top": 0.9375, "n": 16.0})
    trailers = GateReport((result,)).trailers()
    assert trailer_key("forget_rank") == "Cathrepo-Gate-Forget-rank" in trailers
    assert outcome_numbers(trailers[trailer_key("forget_rank")]) == {"out_of_top": 0.9375, "n": 16.0}
