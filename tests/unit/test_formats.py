"""Golden files for the formats other tools read: edit.json, stack.json, adapter_config.json, the commit
trailers. A change to any of them is a format change: bump its schema version, keep reading the old one,
and regenerate the golden files with ``CATHREPO_UPDATE_GOLDEN=1 pytest tests/unit/test_formats.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cathrepo.delta import Delta, LowRank, peft_config
from cathrepo.facts.schema import Fact
from cathrepo.gates.results import GateReport, GateResult
from cathrepo.provenance.manifest import EditRecord, stack_summary
from cathrepo.repo import layout
from cathrepo.repo.commit import edit_trailers
from cathrepo.repo.layout import Stack

GOLDEN = Path(__file__).parent / "data" / "golden"
FACT = Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux", target_new="English",
            target_true="French", relation_id="P103", case_id=0)
REPORT = GateReport((
    GateResult("efficacy", True, {"es": 1.0, "em": 0.8125}, {"efficacy_min": 1.0}, seconds=0.25),
    GateResult("retention", True, {"flips": 1.0, "n": 117.0}, {"retention_max_flips": 2.0}, "1 flip", 2.5),
    GateResult("mmlu", True, detail="not at this stage", skipped=True),
), stage="edit")
RECORD = EditRecord(
    action="edit", fact=FACT.to_dict(), method="rome", params={"layer": 6, "v_stop_prob": 0.5},
    site={"layers": [6], "modules": ["model.layers.6.mlp.down_proj"], "component": "mlp_out"},
    source="https://example.org/correction/1", author="tester", created="2026-12-02T12:00:00+00:00",
    confidence=0.9, risk="low", base_model={"name": "SmolLM2-135M-Instruct", "sha256": "ab" * 32},
    files={layout.ADAPTER_CONFIG: "01" * 32, layout.WEIGHTS: "02" * 32, layout.PROBES: "03" * 32,
           layout.DATA: "04" * 32},
    gates=REPORT.to_dict(), info={"seconds": {"compute": 3.2}}, stack_before=stack_summary(("0123456789ab",)),
    versions={"cathrepo": "0.1.0", "torch": "2.13.0"},
)


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CATHREPO_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed: a format change (see this module's docstring)"


def test_edit_json():
    _check("edit.json", RECORD.to_bytes().decode("utf-8"))
    assert EditRecord.from_bytes((GOLDEN / "edit.json").read_bytes()) == RECORD


def test_edit_json_of_schema_1_still_reads():
    """Schema 1 named the action "kind" (in the record and in its fact)."""
    old = EditRecord.from_bytes((GOLDEN / "edit-schema1.json").read_bytes())
    assert old.action == "edit" and old.schema_version == 1
    assert Fact.from_dict(old.fact) == FACT


def test_edit_json_of_schema_2_still_reads_and_keeps_its_id():
    """Schema 2 listed the active set's ids (``computed_on``); its bytes, and so its id, are kept."""
    raw = (GOLDEN / "edit-schema2.json").read_bytes()
    old = EditRecord.from_bytes(raw)
    assert old.schema_version == 2 and old.computed_on == ("0123456789ab",) and old.stack_before is None
    assert old.to_bytes() == raw


def test_stack_json():
    stack = Stack(("0123456789ab", "ba9876543210"))
    _check("stack.json", stack.to_bytes().decode("utf-8"))
    assert Stack.from_bytes((GOLDEN / "stack.json").read_bytes()) == stack


def test_adapter_config_json():
    generator = torch.Generator().manual_seed(0)
    delta = Delta({
        "model.layers.6.mlp.down_proj": LowRank(torch.randn(8, 1, generator=generator),
                                                torch.randn(1, 16, generator=generator), 0.5),
        "model.layers.7.mlp.down_proj": LowRank(torch.randn(8, 2, generator=generator),
                                                torch.randn(2, 16, generator=generator)),
    }, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    config = peft_config(delta)
    _check("adapter_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    assert config["rank_pattern"] == {"model.layers.6.mlp.down_proj": 1}  # per-module ranks, PEFT's way


def test_commit_trailers():
    trailers = edit_trailers(RECORD, RECORD.id, REPORT)
    _check("trailers.txt", "".join(f"{key}: {value}\n" for key, value in trailers.items()))



def test_export_manifest_json():
    """``cathrepo-export.json`` beside an exported adapter or merged model."""
    from cathrepo.repo.export import Exported

    done = Exported(out=Path("/anywhere"), format="peft", rev="HEAD", commit="c0" * 20,
                    edits=("0123456789abcdef", "fedcba9876543210"), packs=(),
                    base_model={"name": "SmolLM2-135M-Instruct", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                "sha256": "ab" * 32},
                    strategy="svd:1", ranks={"model.layers.6.mlp.down_proj": 1},
                    errors={"model.layers.6.mlp.down_proj": 0.25})
    _check("cathrepo-export.json", json.dumps(done.manifest(), indent=2, sort_keys=True) + "\n")
