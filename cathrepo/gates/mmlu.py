"""MMLU gate: general knowledge through lm-eval, on the in-memory edited model, vs the base model.

lm-eval's own ``mmlu`` task downloads from the hub, so the gate writes one offline task YAML per subject at
run time (``dataset_path: csv`` with absolute ``data_files``; ENVIRONMENT.md), wraps the live model with
``HFLM(pretrained=model, tokenizer=tok)`` and calls ``simple_evaluate``. Accuracy is the micro-average over
every question evaluated. The base model's score is cached on disk keyed by base hash and sample spec.

The data directory holds ``dev/<subject>_dev.csv`` (the few-shot pool) and ``test/<subject>_test.csv``,
header-less ``question,A,B,C,D,answer`` files as in hendrycks/test. A small sample ships with cathrepo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError
from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.results import GateResult

log = logging.getLogger(__name__)

TASK_PREFIX = "cathrepo_mmlu_"
_TEXT = "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:"


def default_mmlu_dir() -> Path:
    return Path(str(resources.files("cathrepo") / "data" / "mmlu"))


@dataclass(frozen=True)
class MmluSpec:
    """Which MMLU questions to evaluate: data directory, subjects, questions per subject, shots."""

    data_dir: Path
    subjects: tuple[str, ...] = ()
    limit: int = 0
    num_fewshot: int = 0

    def resolved_subjects(self) -> list[str]:
        found = sorted(p.name.removesuffix("_test.csv") for p in (self.data_dir / "test").glob("*_test.csv"))
        if not found:
            raise InvalidInputError(f"No MMLU test files (test/<subject>_test.csv) under '{self.data_dir}'.",
                                    hint="Point mmlu_data at a directory laid out like hendrycks/test's data/.")
        if not self.subjects:
            return found
        missing = sorted(set(self.subjects) - set(found))
        if missing:
            raise InvalidInputError(f"MMLU subject(s) not in '{self.data_dir}': {', '.join(missing)}.",
                                    hint=f"Available: {', '.join(found)}.")
        return list(self.subjects)

    def key(self) -> str:
        """What a cached score depends on: the files' bytes, the limit, the shots and lm-eval's version."""
        from importlib.metadata import version

        h = hashlib.sha256()
        for s in self.resolved_subjects():
            for split in ("dev", "test"):
                f = self.data_dir / split / f"{s}_{split}.csv"
                h.update(f.name.encode() + (f.read_bytes() if f.is_file() else b""))
        return f"mmlu:v1:{h.hexdigest()}:{self.limit}:{self.num_fewshot}:{version('lm_eval')}"


def write_tasks(spec: MmluSpec, directory: Path) -> list[str]:
    """Write one offline lm-eval task YAML per subject into ``directory``; return the task names."""
    names = []
    for subject in spec.resolved_subjects():
        dev = (spec.data_dir / "dev" / f"{subject}_dev.csv").resolve()
        test = (spec.data_dir / "test" / f"{subject}_test.csv").resolve()
        files = {"test": str(test)}
        if dev.is_file():
            files["dev"] = str(dev)
        elif spec.num_fewshot:
            raise InvalidInputError(f"Few-shot MMLU needs '{dev}'.", hint="Add dev/ files or set mmlu_num_fewshot = 0.")
        task = {
            "task": TASK_PREFIX + subject,
            "dataset_path": "csv",
            "dataset_kwargs": {"data_files": files, "column_names": ["question", "A", "B", "C", "D", "answer"]},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": _TEXT,
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer.strip())}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
        if dev.is_file():
            task.update({"fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}})
        # JSON is valid YAML, and needs no YAML writer.
        (directory / f"{TASK_PREFIX}{subject}.yaml").write_text(json.dumps(task, indent=1))
        names.append(TASK_PREFIX + subject)
    return names


def evaluate_mmlu(model: Any, tokenizer: Any, spec: MmluSpec, *, batch_size: int = 16) -> dict[str, Any]:
    """Accuracy of the in-memory ``model`` on ``spec``'s questions: {"acc", "n", "subjects": {name: acc}}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    quiet = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="cathrepo-mmlu-") as tmp:
            tasks = write_tasks(spec, Path(tmp))
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = simple_evaluate(
                model=lm, tasks=tasks, num_fewshot=spec.num_fewshot, limit=spec.limit or None,
                task_manager=TaskManager(include_path=tmp), bootstrap_iters=0, log_samples=False,
                verbosity="ERROR",
            )
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    assert out is not None
    subjects, correct, total = {}, 0.0, 0
    for task in tasks:
        acc = float(out["results"][task]["acc,none"])
        n = int(out["n-samples"][task]["effective"])
        subjects[task.removeprefix(TASK_PREFIX)] = acc
        correct += acc * n
        total += n
    return {"acc": correct / total, "n": total, "subjects": subjects}


def spec_from_policy(ctx: GateRun) -> MmluSpec:
    policy = ctx.policy
    return MmluSpec(policy.path("mmlu_data", ctx.root) or default_mmlu_dir(), tuple(policy.mmlu_subjects),
                    policy.mmlu_limit, policy.mmlu_num_fewshot)


@GATES.register
class MmluGate(Gate):
    """MMLU accuracy of the edited model stays within ``mmlu_max_drop`` of the base model's."""

    name = "mmlu"
    cost = 3
    states = ("base", "after")
    cacheable = True

    def cache_key(self, ctx: GateRun) -> str | None:
        return spec_from_policy(ctx).key()

    def measure(self, ctx: GateRun, state: str) -> dict[str, Any]:
        return evaluate_mmlu(ctx.model, ctx.tokenizer, spec_from_policy(ctx))

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        base, after = measured["base"]["acc"], measured["after"]["acc"]
        drop = base - after
        ok = drop <= self.policy.mmlu_max_drop + 1e-9
        detail = "" if ok else f"MMLU accuracy fell from {base:.3f} to {after:.3f}"
        return self.result(ok, {"mmlu": after, "mmlu_base": base, "drop": drop, "n": float(measured["after"]["n"])},
                           {"mmlu_max_drop": self.policy.mmlu_max_drop}, detail)
