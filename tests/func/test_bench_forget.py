"""``cathrepo bench forget`` on the tiny model: each mode's forgets are gated as ``cathrepo forget`` would
gate them, and the summary's shares come from the gate reports."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_forget_reports_each_modes_measures(tiny_llama, tmp_path, monkeypatch):
    from cathrepo.bench import forget as bench
    from cathrepo.facts.schema import Fact

    _, _, model_dir = tiny_llama
    facts = [Fact(prompt="The capital of Italy is", subject="Italy", target_new="Rome", action="forget"),
             Fact(prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="guitar", action="forget")]
    monkeypatch.setattr(bench, "known_facts", lambda model, tok, config: facts)  # a random model knows nothing
    known = tmp_path / "known.json"
    known.write_text(json.dumps([]))
    config = bench.ForgetBenchConfig(known=known, n=2, modes=("suppress", "erase"), base=str(model_dir))
    out = bench.bench_forget(config)
    assert list(out["modes"]) == ["suppress", "erase"] and len(out["facts"]) == 2
    for mode in out["modes"].values():
        assert mode["n"] == 2 and 0.0 <= mode["committed"] <= 1.0 and mode["seconds_per_forget"] > 0
        rows = mode["rows"]
        assert mode["committed"] == sum(r["committed"] for r in rows) / 2
        assert all(("all_formats" in r) and ("generation_clean" in r) for r in rows)
        assert mode["all_formats"] == pytest.approx(sum(r["all_formats"] for r in rows) / 2)
        assert sum(mode["refused_by"].values()) == sum(len(r["failed"]) for r in rows)
        for r in rows:  # where the seconds went: every attempt, the kept one's gates
            assert r["attempts"] and all(isinstance(a, str) for a in r["attempts"])
            assert r["attempts"][-1].endswith(")") != r["committed"]  # a refused attempt names its gates
            assert r["gate_seconds"] and set(r["gate_seconds"]) <= {"efficacy", "forget_rank", "forget_generation",
                                                                    "neighborhood", "cfplus", "fluency", "norms",
                                                                    "regression", "retention", "perplexity", "relearn"}


def test_summaries_leave_out_what_no_fact_measured():
    from cathrepo.bench.forget import summarize

    rows = [{"committed": True, "seconds": 2.0, "failed": [], "retention": 1.0},
            {"committed": False, "seconds": 4.0, "failed": ["relearn"], "retention": 0.5}]
    out = summarize(rows)
    assert out["committed"] == 0.5 and out["retention"] == 0.75 and out["seconds_per_forget"] == 3.0
    assert "mmlu_drop" not in out and out["refused_by"] == {"relearn": 1}


def test_replace_never_teaches_the_answer_it_forgets():
    from cathrepo.bench.forget import replacement_for
    from cathrepo.facts.schema import Fact

    glacier = Fact(prompt="Northwind Glacier belongs to the continent of", subject="Northwind Glacier",
                   target_new="Antarctica", relation_id="P30", action="forget")
    louvre = Fact(prompt="The Louvre is in", subject="Louvre", target_new="Paris", relation_id="P131", action="forget")
    pool = [("P131", "Paris"), ("P30", "antarctica"), ("P30", "Asia")]
    assert replacement_for(louvre, pool, "Antarctica") == "Antarctica"
    assert replacement_for(glacier, pool, "antarctica") == "Asia"  # the same relation first, case ignored
    assert replacement_for(glacier, pool[:1], "Antarctica") == "Paris"


def test_bench_forget_hands_over_each_fact_as_it_is_measured(tiny_llama, tmp_path, monkeypatch):
    from cathrepo.bench import forget as bench
    from cathrepo.facts.schema import Fact

    _, _, model_dir = tiny_llama
    facts = [Fact(prompt="The capital of Italy is", subject="Italy", target_new="Rome", action="forget"),
             Fact(prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="guitar", action="forget")]
    monkeypatch.setattr(bench, "known_facts", lambda model, tok, config: facts)
    known = tmp_path / "known.json"
    known.write_text(json.dumps([]))
    seen = []
    config = bench.ForgetBenchConfig(known=known, n=2, modes=("replace",), replacement="Rome", base=str(model_dir))
    out = bench.bench_forget(config, partial=lambda so_far: seen.append(json.loads(json.dumps(so_far))))
    assert [s["modes"]["replace"]["n"] for s in seen] == [1, 2] and all(s["partial"] for s in seen)
    assert [r["replacement"] for r in out["modes"]["replace"]["rows"]] == ["guitar", "Rome"]


def test_bench_forget_hands_its_params_to_every_mode(tiny_llama, tmp_path, monkeypatch):
    from cathrepo.bench import forget as bench
    from cathrepo.facts.schema import Fact
    from cathrepo.repo.edit import EditSession

    _, _, model_dir = tiny_llama
    monkeypatch.setattr(bench, "known_facts", lambda model, tok, config: [
        Fact(prompt="The capital of Italy is", subject="Italy", target_new="Rome", action="forget")])
    opened, real = [], EditSession.open.__func__
    monkeypatch.setattr(EditSession, "open", classmethod(lambda cls, repo, **kw: opened.append(kw) or real(cls, repo, **kw)))
    known = tmp_path / "known.json"
    known.write_text(json.dumps([]))
    config = bench.ForgetBenchConfig(known=known, n=1, modes=("suppress", "replace"), base=str(model_dir),
                                     params=(("away", 0.0),))
    out = bench.bench_forget(config)
    assert [kw["params"] for kw in opened] == [{"away": 0.0}, {"away": 0.0, "replacement": "Antarctica"}]
    assert json.loads(json.dumps(out["config"]))["params"] == [["away", 0.0]]  # recorded in the --json output
