"""``negate``'s search (:func:`cathrepo.repo.forget.attempt_forget`): the strongest scale first, over the
layers; a layer where even it leaves the answer is given up; where it forgets, the weaker scales are
tried smallest change first. A fake session stands in for the gates, so the order is what is tested."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from cathrepo.repo.forget import attempt_forget

DEFAULT, LAYERS = 6, (6, 3, 4, 5)


@dataclass(frozen=True)
class _Result:
    gates: Any
    attempts: tuple[dict[str, Any], ...]
    site: dict[str, Any] = field(default_factory=dict)


class _Session:
    """Gates that forget at ``forgets`` (layer -> the weakest |scale| that forgets there) and pass only
    where ``passes`` says (layer -> the scales whose cost the gates accept); layer retries as configured."""

    def __init__(self, forgets: dict[int, float], passes: dict[int, set[float]]) -> None:
        self.model = SimpleNamespace(config=SimpleNamespace(model_type="llama", num_hidden_layers=12))
        self.config = SimpleNamespace(edit=SimpleNamespace(params={}))
        self.params: dict[str, Any] = {}
        self.forgets, self.passes, self.calls = forgets, passes, []

    def _one(self, scale: float, layer: int) -> dict[str, Any]:
        self.calls.append((scale, layer))
        forgot = layer in self.forgets and abs(scale) >= self.forgets[layer]
        ok = forgot and scale in self.passes.get(layer, set())
        failed = [] if ok else [{"gate": "forget_rank" if not forgot else "retention"}]
        return {"site": {"layers": [layer]}, "passed": ok, "failed": failed}

    def attempt(self, request: Any, *, params: dict[str, Any], progress: Any = None) -> _Result:
        layers = [params["layer"]] if "layer" in params else list(LAYERS)
        attempts = []
        for layer in layers:  # the configured retries stop at the first attempt that passes
            attempts.append(self._one(params["scale"], layer))
            if attempts[-1]["passed"]:
                return _Result(SimpleNamespace(passed=True), tuple(attempts), {"layers": [layer]})
        return _Result(SimpleNamespace(passed=False), tuple(attempts), {"layers": [layers[0]]})


def _negate_params(monkeypatch) -> None:
    import cathrepo.edits.base as base

    params = SimpleNamespace(scales=(-0.5, -1.0, -2.0, -4.0))
    monkeypatch.setattr(base, "get_method", lambda name: SimpleNamespace(params_for=lambda model, o: params))


def test_a_fact_negation_cannot_forget_is_refused_after_one_attempt_per_layer(monkeypatch):
    _negate_params(monkeypatch)
    session = _Session(forgets={}, passes={})
    result = attempt_forget(session, object(), "negate", None)
    assert not result.gates.passed and session.calls == [(-4.0, layer) for layer in LAYERS]
    assert [a["retry"] for a in result.attempts] == ["scale -4"] * len(LAYERS)


def test_the_smallest_change_that_passes_is_kept_where_the_strongest_forgets(monkeypatch):
    _negate_params(monkeypatch)
    # layer 6 forgets from |1| but every scale there costs too much; layer 3 forgets from |2| and passes at -2
    session = _Session(forgets={6: 1.0, 3: 2.0}, passes={3: {-2.0, -4.0}})
    result = attempt_forget(session, object(), "negate", None)
    assert result.gates.passed and session.calls[-1] == (-2.0, 3)
    assert session.calls == [(-4.0, 6), (-4.0, 3), (-0.5, 6), (-1.0, 6), (-2.0, 6), (-0.5, 3), (-1.0, 3), (-2.0, 3)]


def test_the_strongest_scale_is_kept_when_only_it_passes(monkeypatch):
    _negate_params(monkeypatch)
    session = _Session(forgets={4: 4.0}, passes={4: {-4.0}})
    result = attempt_forget(session, object(), "negate", None)
    assert result.gates.passed and result.site == {"layers": [4]}
    assert session.calls == [(-4.0, 6), (-4.0, 3), (-4.0, 4), (-0.5, 4), (-1.0, 4), (-2.0, 4)]
    assert [a["retry"] for a in result.attempts][:3] == ["scale -4"] * 3
