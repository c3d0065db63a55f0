"""Gate policy: which gates run at which stage, and the thresholds they apply (the ``[gates]`` table).

The policy is the ``[gates]`` table of ``cathrepo.toml``. Every threshold has help text and a default
that a reasonable single ROME edit on the embedded model passes; the defaults were checked against
measured edits (BENCHMARKS.md). Unknown keys are dropped with a warning; ``schema_version`` lets old
tables be upgraded by explicit patches (STYLE.md §3).

Stages:
    edit: a new edit before it is committed (``before`` = active edits, ``after`` = before + new).
    forget: a new forget before it is committed (as ``edit``): its own stage, because what it must show is
        the opposite of an edit's (the answer gone on every probe family, and staying gone when someone
        fine-tunes the model) and the edit's paraphrase/generation gates, which look for a new target,
        have nothing to check; the gates every change answers to (neighbourhood, regression, retention,
        perplexity, fluency, norms) are in both.
    revert: an edit leaves the active set (``after`` = before minus the reverted edit).
    merge: two lines of edits are joined (``after`` = the merged, possibly consolidated, stack; the edits new
        to the base line must still hold there, the base line's must keep holding, and MMLU is measured:
        ``cathrepo ci`` runs this stage on every pull request).
    promote: a revision goes to an environment (canary, production).
    revision: ``cathrepo gate REV`` (``before`` = the parent's stack, ``after`` = REV's stack).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cathrepo.exceptions import ConfigError
from cathrepo.facts.templates import OPEN_PROMPTS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STAGES = ("edit", "forget", "revert", "merge", "promote", "revision")

DEFAULT_STAGES: dict[str, tuple[str, ...]] = {
    "edit": ("efficacy", "paraphrase", "neighborhood", "cfplus", "generation", "fluency", "norms",
             "regression", "retention", "perplexity"),
    "forget": ("efficacy", "forget_rank", "forget_generation", "neighborhood", "cfplus", "fluency", "norms",
               "regression", "retention", "perplexity", "relearn"),
    "revert": ("regression", "retention"),
    "merge": ("efficacy", "paraphrase", "neighborhood", "cfplus", "regression", "retention", "norms", "perplexity",
              "mmlu"),
    "promote": ("regression", "retention", "perplexity", "mmlu"),
    "revision": ("efficacy", "paraphrase", "neighborhood", "generation", "regression", "retention",
                 "perplexity"),
}


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (dict, list, tuple)):
        return field(default_factory=lambda: _copy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: tuple(v) for k, v in value.items()}
    return tuple(value)


@dataclass
class GatePolicy:
    """Thresholds and stage selection of the gates (the ``[gates]`` table of ``cathrepo.toml``)."""

    schema_version: int = _f(SCHEMA_VERSION, "Version of this table's layout.")
    stages: dict[str, tuple[str, ...]] = _f(DEFAULT_STAGES, "Gate names to run at each stage (stages left out "
                                                            "keep their defaults).")
    flip_tolerance: float = _f(0.1, "A probe that passed before counts as broken only if it fails after with its lead "
                                    "(log-probability of its answer over the competing one, nats) fallen by at "
                                    "least this much: smaller flips are near-ties tipping over (neighbourhood, NS+, "
                                    "regression, retention).")
    # -- the new edit's own probes (CounterFact, Meng et al. 2022) --
    efficacy_min: float = _f(1.0, "ES: fraction of rewrite prompts where the new target beats the old one.")
    forget_min: float = _f(1.0, "For a forget: fraction of forget prompts whose greedy answer no longer "
                                "contains the forgotten answer.")
    paraphrase_min: float = _f(0.5, "PS: fraction of paraphrases where the new target beats the old one.")
    neighborhood_max_drop: float = _f(0.34, "NS: largest allowed drop (fraction of neighbour prompts) in "
                                            "neighbours that still prefer their own answer, vs before.")
    nkl_max: float = _f(0.2, "CounterFact+ NKL: largest mean KL (nats) of the neighbours' next-token "
                             "distribution, before vs after.")
    neighbors: int = _f(3, "Neighbour prompts mined per edit (other subjects of the relation whose answer the model "
                           "gives), besides the record's own: the samples NS, NS+ and NKL are measured on.")
    ns_plus_max_drop: float = _f(0.5, "CounterFact+ NS+: largest drop in neighbours (with the edit's "
                                      "prompt prepended) preferring their own answer.")
    generation_min: float = _f(0.5, "Fraction of rewrite and paraphrase prompts whose greedy continuation "
                                    "contains the new target.")
    generation_tokens: int = _f(12, "Tokens decoded for the free-generation check.")
    fluency_max_drop: float = _f(0.2, "Largest drop in weighted n-gram entropy (bits) of generations (0.2 over 24 "
                                      "tokens: paired against 0.5 over 48 on tuning records, BENCHMARKS.md).")
    fluency_tokens: int = _f(24, "Tokens decoded per generation prompt for fluency (the gates' longest decode).")
    fluency_prompts: int = _f(0, "Open prompts about the subject (\"{subject} is\", \"The story of {subject}\", ...) "
                                 "decoded for fluency beside the edit's own prompts: more samples of the same "
                                 "mean drop in the same batched decode (0: the edit's prompts only; off until "
                                 "calibrated, BENCHMARKS.md).")
    fluency_compare: str = _f("common-length", "How each prompt's two texts are compared: 'common-length' (both cut "
                                               "to the shorter one's words, so a continuation that ended, the answer "
                                               "and a full stop, does not read as a repetition; calibrated on tuning "
                                               "records, BENCHMARKS.md) or 'as-decoded' (each as the decoder left it).")
    norms_max_growth: float = _f(0.05, "Largest relative growth of an edited weight's Frobenius norm.")
    # -- a forget (issue 14): asked any way, the answer is gone, and stays gone after a short fine-tune --
    forget_top_k: int = _f(10, "A forgotten answer's first token must rank outside the top k next tokens (10: "
                               "outside what greedy, top-k and most nucleus sampling ever emit).")
    forget_rank_min: float = _f(1.0, "Fraction of forget probes x format shifts with the answer outside the top k "
                                     "(1: every one; one leaking rewording is a leak).")
    forget_formats: tuple[str, ...] = _f(("plain", "question", "chat", "fewshot"),
                                         "Format shifts each forget probe is asked in (chat: only when the tokenizer "
                                         "has a template).")
    forget_generation_min: float = _f(1.0, "Fraction of greedy and sampled continuations free of the answer.")
    forget_samples: int = _f(2, "Sampled continuations per forget prompt (temperature 1, seeded).")
    forget_seed: int = _f(0, "Seed of the sampled continuations (the verdict repeats).")
    relearn_steps: int = _f(8, "AdamW steps on unrelated (held-out) text in the relearning probe: a small, "
                               "fixed attacker budget.")
    relearn_lr: float = _f(1e-4, "Learning rate of the relearning probe (a usual full fine-tuning rate).")
    relearn_tokens: int = _f(64, "Tokens per relearning step.")
    relearn_seed: int = _f(0, "Seed of the relearning probe.")
    relearn_min: float = _f(1.0, "Fraction of forget prompts still outside the top k after relearning.")
    # -- everything that was there before --
    regression_kinds: tuple[str, ...] = _f(("rewrite", "paraphrase", "neighborhood", "attribute", "forget"),
                                           "Probe kinds of the active edits re-checked at every change.")
    regression_fast_kinds: tuple[str, ...] = _f(("rewrite", "forget"),
                                                "At the edit stage, the kinds re-checked for active edits of "
                                                "another relation and subject (those sharing the new edit's get "
                                                "regression_kinds); empty: regression_kinds for every edit.")
    regression_max_broken_rewrite: int = _f(0, "Rewrite/forget probes of active edits that passed before "
                                                "and may fail after (every edit must keep holding).")
    regression_max_broken: float = _f(0.05, "Fraction of the other previously passing probes of active "
                                            "edits that may fail after.")
    regression_dtype: str = _f("float32", "Precision the suite is scored in: float32, or bfloat16 (about "
                                          "2.5x faster on CPUs with AVX-512 BF16; rounding may flip near-ties).")
    retention_sample: int = _f(500, "Known facts checked by the retention gate (the first N of the file).")
    retention_data: str = _f("", "Known-facts file (known_1000 format); empty: the copy shipped with cathrepo.")
    retention_known_only: bool = _f(True, "Keep only facts whose answer the base model gives.")
    retention_max_drop: float = _f(0.02, "Largest drop (fraction) of known facts keeping the base model's "
                                         "answer, vs before.")
    retention_min: float = _f(0.0, "Smallest fraction of known facts keeping the base model's answer.")
    mmlu_data: str = _f("", "MMLU CSV directory with dev/ and test/ (hendrycks layout); empty: the sample "
                            "shipped with cathrepo.")
    mmlu_limit: int = _f(0, "Test questions per subject (0: all in the data directory).")
    mmlu_subjects: tuple[str, ...] = _f((), "Subjects to evaluate (empty: every subject found).")
    mmlu_num_fewshot: int = _f(0, "Few-shot examples from dev/ per question.")
    mmlu_max_drop: float = _f(0.01, "Largest accuracy drop vs the base model (0.01 = 1 point).")
    perplexity_data: str = _f("", "Held-out text file; empty: the text shipped with cathrepo.")
    perplexity_max_growth: float = _f(0.05, "Largest relative perplexity growth on held-out text, vs before.")
    batch_size: int = _f(128, "Rows per forward pass in teacher-forced scoring.")

    def __post_init__(self) -> None:
        self.stages = {**DEFAULT_STAGES, **{k: tuple(v) for k, v in self.stages.items()}}
        self.regression_kinds = tuple(self.regression_kinds)
        self.regression_fast_kinds = tuple(self.regression_fast_kinds)
        self.mmlu_subjects = tuple(self.mmlu_subjects)
        self.forget_formats = tuple(self.forget_formats)
        unknown_formats = sorted(set(self.forget_formats) - {"plain", "question", "chat", "fewshot"})
        if unknown_formats:
            raise ConfigError(f"Unknown [gates] forget_formats: {', '.join(unknown_formats)}.",
                              hint="Use plain, question, chat, fewshot.")
        if self.regression_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"[gates] regression_dtype = {self.regression_dtype!r} is not supported.",
                              hint="Use float32 or bfloat16.")
        bad = sorted(set(self.stages) - set(STAGES))
        if bad:
            raise ConfigError(f"Unknown gate stage(s) in [gates.stages]: {', '.join(bad)}.",
                              hint=f"Stages are {', '.join(STAGES)}.")
        for name in ("efficacy_min", "forget_min", "paraphrase_min", "neighborhood_max_drop",
                     "ns_plus_max_drop", "generation_min", "regression_max_broken", "retention_max_drop",
                     "retention_min", "mmlu_max_drop", "forget_rank_min", "forget_generation_min", "relearn_min"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"[gates] {name} = {value} is outside [0, 1].", hint=_help(name))
        for name in ("generation_tokens", "fluency_tokens", "retention_sample", "batch_size", "neighbors",
                     "forget_top_k", "relearn_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"[gates] {name} must be positive.", hint=_help(name))
        if self.fluency_compare not in ("as-decoded", "common-length"):
            raise ConfigError(f"[gates] fluency_compare = {self.fluency_compare!r} is unknown.",
                              hint="Use 'as-decoded' or 'common-length'.")
        if not 0 <= int(self.fluency_prompts) <= len(OPEN_PROMPTS):
            raise ConfigError(f"[gates] fluency_prompts = {self.fluency_prompts} is outside [0, {len(OPEN_PROMPTS)}].",
                              hint=_help("fluency_prompts"))
        for name in ("flip_tolerance", "nkl_max", "fluency_max_drop", "norms_max_growth", "perplexity_max_growth",
                     "mmlu_limit", "mmlu_num_fewshot", "regression_max_broken_rewrite", "forget_samples",
                     "relearn_steps", "relearn_lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[gates] {name} must not be negative.", hint=_help(name))

    def gates_for(self, stage: str) -> tuple[str, ...]:
        """The gate names that run at ``stage``."""
        if stage not in STAGES:
            raise ConfigError(f"Unknown gate stage '{stage}'.", hint=f"Stages are {', '.join(STAGES)}.")
        return self.stages[stage]

    def path(self, name: str, root: Path | None = None) -> Path | None:
        """A data path field as a Path (relative paths resolve against ``root``), or None when empty."""
        value = getattr(self, name)
        if not value:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() or root is None else root / p

    def to_dict(self) -> dict[str, Any]:
        """A TOML-ready table: lists instead of tuples, every field present."""
        data = dataclasses.asdict(self)
        data["stages"] = {k: list(v) for k, v in self.stages.items()}
        data["regression_kinds"] = list(self.regression_kinds)
        data["regression_fast_kinds"] = list(self.regression_fast_kinds)
        data["mmlu_subjects"] = list(self.mmlu_subjects)
        data["forget_formats"] = list(self.forget_formats)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GatePolicy:
        """Build a policy from a ``[gates]`` table; unknown keys are dropped with a warning."""
        data = dict(data or {})
        version = int(data.pop("schema_version", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            raise ConfigError(f"The [gates] table has schema_version {version}; this cathrepo reads "
                              f"{SCHEMA_VERSION}.", hint="Upgrade cathrepo.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("Ignoring unknown [gates] key(s): %s", ", ".join(unknown))
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            return cls(schema_version=SCHEMA_VERSION, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"Bad [gates] table: {exc}.") from None

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (for ``cathrepo init``'s commented cathrepo.toml)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _help(name: str) -> str:
    return GatePolicy.help().get(name, "")
