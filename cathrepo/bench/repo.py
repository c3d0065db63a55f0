"""``cathrepo bench repo``: the product as a user meets it, one real ``cathrepo edit`` per record.

Each record is edited by its own ``cathrepo edit --file <one record> --json`` process in one repository,
one signed commit each, with the repository's own gates; the wall time runs from process start to
signed commit (model loading, statistics, gates and signing included). The report gives the share
committed, refusals by gate (an edit can fail several), errors (exit statuses other than 0 and 4), the
wall-time distribution, and whether ``cathrepo verify`` is clean at the end.

With ``worker`` the edits run as a user with ``cathrepo worker start`` runs them: a worker of the run's
own preloads the repository's base model and every ``cathrepo edit`` process hands itself to it (the
worker's start-up is not counted in any edit's wall time). Without it no worker is used, even if one
runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cathrepo.config import StackConfig
from cathrepo.exceptions import ConfigError, GateFailedError, InvalidInputError

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class RepoBenchConfig:
    """What ``cathrepo bench repo`` runs.

    Attributes:
        data: CounterFact (flat or ROME layout) or zsRE records.
        n: records to edit (the first N after ``skip``, keeping only records with a true target).
        skip: records with a true target to pass over first.
        repo: the repository to edit (created by ``cathrepo init`` when missing); None: a fresh one in a
            temporary directory.
        base: base model for a repository this run creates (None: the embedded default).
        method: ``--method`` of every edit (None: the repository's default).
        params: ``--param KEY=VALUE`` items passed to every edit.
        worker: run the edits through a resident worker of this run's own (``cathrepo worker``).
        fresh_gate_cache: the edits' gate measurements go to a cache of this run's own (every other
            cache, models and statistics, is shared).
        restrain: ``[stack] restrain`` of the repository (``clip``/``prune``; None: as it is): a
            repository this run creates gets it in a commit of its own; one given must already have it.
        restrain_factor: ``[stack] restrain_factor`` with ``restrain``.
    """

    data: Path
    n: int = 100
    skip: int = 0
    repo: Path | None = None
    base: str | None = None
    method: str | None = None
    params: Sequence[str] = field(default_factory=tuple)
    worker: bool = False
    fresh_gate_cache: bool = False
    restrain: str | None = None
    restrain_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.n <= 0 or self.skip < 0:
            raise InvalidInputError("--n must be positive and --skip not negative.")
        try:
            StackConfig(self.restrain or "", self.restrain_factor)  # refuses what cathrepo.toml would refuse
        except ConfigError as exc:
            raise InvalidInputError(f"--restrain {self.restrain} --restrain-factor {self.restrain_factor}: "
                                    f"{exc.message.removeprefix('cathrepo.toml [stack] ')}") from None


def _stacked(repo: Path, config: RepoBenchConfig, created: bool) -> None:
    """Give a repository this run created the run's ``[stack]`` (one commit); check one it was given."""
    from cathrepo.config import dump_config, load_config
    from cathrepo.repo import Repo, layout

    wanted = StackConfig(config.restrain or "", config.restrain_factor)
    settings = load_config(repo / layout.CONFIG)
    if settings.stack == wanted:
        return
    if not created:
        have = settings.stack
        raise InvalidInputError(
            f"{repo} applies its stack with restrain={have.restrain!r} at {have.restrain_factor:g}, "
            f"not the run's restrain={wanted.restrain!r} at {wanted.restrain_factor:g}.",
            hint="Give the run the repository's --restrain (and --restrain-factor), "
                 "or set [stack] in its cathrepo.toml.")
    (repo / layout.CONFIG).write_text(dump_config(dataclasses.replace(settings, stack=wanted)))
    opened = Repo.open(repo)
    opened.git.add([layout.CONFIG])
    opened.git.commit(f"Apply the stack restrained: {wanted.restrain} at {wanted.restrain_factor:g}",
                      sign_with=opened.signing_key())


def records(config: RepoBenchConfig) -> list[tuple[int, dict[str, Any]]]:
    """``(index in the file, record)`` of the records to edit: those with a true target, after ``skip``."""
    from cathrepo.facts.schema import load_records, parse_records

    raw = load_records(config.data)
    facts = parse_records(raw)
    kept = [(i, r) for i, (r, f) in enumerate(zip(raw, facts, strict=True)) if f.target_true][config.skip :]
    if not kept:
        raise InvalidInputError(f"No record in '{config.data}' has a true target to compare against.",
                                hint="CounterFact and zsRE records carry one; plain records need target_true.")
    return kept[: config.n]


def _cathrepo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cathrepo", *args], cwd=cwd, text=True, capture_output=True,
                          env=env)


#: The cache entries a fresh gate cache shares with the user's even before they exist there.
SHARED_CACHES = ("gguf", "hashes", "models", "stats")


def _worker_env(config: RepoBenchConfig, scratch: Path) -> dict[str, str]:
    """The edits' environment: the run's own worker socket, or no worker at all; with
    ``fresh_gate_cache``, a cache directory of the run's own (see :func:`_fresh_cache`)."""
    env = {**os.environ, **({"CATHREPO_CACHE_DIR": str(_fresh_cache(scratch))} if config.fresh_gate_cache else {})}
    if not config.worker:
        return {**env, "CATHREPO_WORKER": "0"}
    return {**env, "CATHREPO_WORKER": "1", "CATHREPO_WORKER_SOCKET": str(scratch / "worker.sock")}


def _fresh_cache(scratch: Path) -> Path:
    """A cache directory under ``scratch`` whose entries link to the user's cache (each of
    :data:`SHARED_CACHES` created there when missing, so what the edits add is kept), all but the gate
    cache, which starts empty."""
    from cathrepo.model_store import cache_dir

    fresh = scratch / "cache"
    fresh.mkdir(exist_ok=True)
    user = cache_dir()
    present = {p.name for p in user.iterdir() if p.is_dir()} if user.is_dir() else set()
    for name in sorted((present | set(SHARED_CACHES)) - {"gates"}):
        shared = user / name
        shared.mkdir(parents=True, exist_ok=True)
        link = fresh / name
        if not link.is_symlink():
            link.symlink_to(shared, target_is_directory=True)
    return fresh


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def edit_one(repo: Path, index: int, record: dict[str, Any], config: RepoBenchConfig, scratch: Path,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Edit one record in its own ``cathrepo edit`` process; its status, failing gates and wall seconds."""
    path = scratch / f"record-{index}.json"
    path.write_text(json.dumps([record]) + "\n")
    args = ["edit", "--file", str(path), "--json", "--source", f"bench:{config.data.name}#{index}"]
    args += ["--method", config.method] if config.method else []
    for item in config.params:
        args += ["--param", item]
    start = time.perf_counter()
    proc = _cathrepo(*args, cwd=repo, env=env)
    wall = time.perf_counter() - start
    status = {0: "committed", GateFailedError.exit_code: "refused"}.get(proc.returncode, "error")
    row: dict[str, Any] = {"index": index, "case_id": record.get("case_id"), "status": status,
                           "exit_code": proc.returncode, "wall_s": round(wall, 3), "failed_gates": []}
    try:
        entry = json.loads(proc.stdout)[-1] if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        entry = {}
    row["id"], row["commit"] = entry.get("id"), entry.get("commit")
    gates = entry.get("gates") or {}
    row["failed_gates"] = [{k: g.get(k) for k in ("name", "metrics", "thresholds", "detail")}
                           for g in gates.get("results", ()) if not g.get("passed", True)]
    if "attempts" in entry:
        row["attempts"] = entry["attempts"]
    if status != "committed":
        row["error"] = _last_line(proc.stderr)
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts, refusals by gate and the wall-time distribution of the edited records, and how the
    first attempts fared (:func:`first_attempts`)."""
    status = Counter(r["status"] for r in rows)
    by_gate = Counter(g["name"] for r in rows if r["status"] == "refused" for g in r["failed_gates"])
    walls = sorted(r["wall_s"] for r in rows if r["wall_s"] is not None)  # a recovered row has none
    return {
        "n": len(rows), "committed": status["committed"], "refused": status["refused"], "errors": status["error"],
        "committed_share": status["committed"] / len(rows) if rows else 0.0,
        "refusals_by_gate": dict(by_gate.most_common()),
        "wall_median_s": round(statistics.median(walls), 3) if walls else None,
        "wall_p90_s": walls[math.ceil(0.9 * len(walls)) - 1] if walls else None,  # nearest rank
        "wall_min_s": walls[0] if walls else None, "wall_max_s": walls[-1] if walls else None,
        **first_attempts(rows),
    }


def first_attempts(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the records' first attempts fared, from each record's ``attempts``: how many passed, which
    gates refused the others (an attempt can fail several), which retry won a record its first attempt
    lost ("layer" for any other layer), and the median wall and seconds of the records whose first
    attempt passed (what an edit costs when no retry is needed). Records without attempts (an error)
    are left out."""
    tried = [r for r in rows if r.get("attempts")]
    passed = [r for r in tried if r["attempts"][0]["passed"]]
    refused_by = Counter(f["gate"] for r in tried if not r["attempts"][0]["passed"] for f in r["attempts"][0]["failed"])
    won_by = Counter(_retry_kind(r["attempts"][-1]) for r in tried
                     if r["status"] == "committed" and len(r["attempts"]) > 1)

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 3) if values else None

    return {
        "first_attempt_passed": len(passed),
        "first_attempt_refusals_by_gate": dict(refused_by.most_common()),
        "won_by_retry": dict(won_by.most_common()),
        "first_attempt_wall_median_s": median([r["wall_s"] for r in passed]),
        "first_attempt_seconds_median": {part: median([r["attempts"][0]["seconds"][part] for r in passed
                                                       if part in r["attempts"][0].get("seconds", {})])
                                         for part in ("probes", "compute", "gates")},
    }


def _retry_kind(attempt: dict[str, Any]) -> str:
    kind = str(attempt.get("retry", "?"))
    return "layer" if kind.startswith("layer ") else kind


def resumed_rows(config: RepoBenchConfig, out: Path) -> list[dict[str, Any]]:
    """The rows a cut run of the same records into the same repository wrote to ``out`` (none when it
    does not exist), so ``bench_repo(..., earlier=...)`` goes on after them. A record the repository
    committed after the last row was written (the run cut between the commit and the write) gets a row
    of its own, marked ``recovered`` and without a wall time, so it is never edited twice."""
    from cathrepo.provenance.manifest import EditRecord
    from cathrepo.repo import Repo, layout

    if config.repo is None:
        raise InvalidInputError("--resume goes on in the repository of the cut run.", hint="Pass its --repo.")
    if not out.is_file():
        return []
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
        rows = list(data["records"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"'{out}' is not the JSON of a 'cathrepo bench repo' run ({exc}).",
                                hint="Pass the --out file the cut run wrote, or a new one without --resume.") from exc
    todo = records(config)
    if (data.get("data"), data.get("repo")) != (str(config.data), str(config.repo)) or \
            [r["index"] for r in rows] != [i for i, _ in todo[: len(rows)]]:
        raise InvalidInputError(f"'{out}' was written by a run of other records or another repository.",
                                hint="Resume with that run's --data, --skip and --repo, or write to a new --out.")
    if not (config.repo / "cathrepo.toml").is_file():
        return rows
    files = Repo.open(config.repo).git.read_files("HEAD", layout.EDITS)  # every record at once
    sources = {EditRecord.from_bytes(data).source for path, data in files.items() if path.endswith("/" + layout.RECORD)}
    for index, record in todo[len(rows):]:
        if f"bench:{config.data.name}#{index}" not in sources:
            break
        rows.append({"index": index, "case_id": record.get("case_id"), "status": "committed", "exit_code": 0,
                     "wall_s": None, "failed_gates": [], "recovered": True})
    return rows


def bench_repo(config: RepoBenchConfig, progress: Progress | None = None,
               on_record: Callable[[dict[str, Any]], None] | None = None,
               earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Run the benchmark; ``progress(done, total, last status)`` reports each record and ``on_record``
    receives the result so far after each one (a long run that is cut keeps what it measured).
    ``earlier`` are the rows of a cut run of the same records (:func:`resumed_rows`): those records are
    not edited again and the report covers them all."""
    say = progress or (lambda done, total, last: None)
    todo = records(config)
    scratch = Path(tempfile.mkdtemp(prefix="cathrepo-bench-repo-"))
    # 1. the repository: the one given (created when missing) or a fresh one
    repo = config.repo or scratch / "repo"
    created = not (repo / "cathrepo.toml").is_file()
    if created:
        init = _cathrepo("init", str(repo), *(["--base", config.base] if config.base else []), cwd=scratch)
        if init.returncode != 0:
            raise InvalidInputError(f"cathrepo init {repo} failed: {_last_line(init.stderr)}")
    _stacked(repo, config, created)
    # 2. one edit process per record, in order, each on top of the ones committed before
    env = _worker_env(config, scratch)
    rows: list[dict[str, Any]] = list(earlier)
    try:
        if config.worker:
            started = _cathrepo("worker", "start", cwd=repo, env=env)
            if started.returncode != 0:
                raise InvalidInputError(f"cathrepo worker start failed: {_last_line(started.stderr)}")
        for done, (index, record) in enumerate(todo):
            if done < len(earlier):
                continue
            say(done, len(todo), rows[-1]["status"] if rows else "")
            rows.append(edit_one(repo, index, record, config, scratch, env))
            log.info("record %d: %s in %.1f s", index, rows[-1]["status"], rows[-1]["wall_s"])
            if on_record is not None:
                on_record(_result(config, repo, rows, None))
    finally:  # the worker and the per-record input files go; a fresh repository made here stays
        if config.worker:
            _cathrepo("worker", "stop", cwd=repo, env=env)
        for path in [*scratch.glob("record-*.json"), *scratch.glob("worker.*")]:
            path.unlink()
        if config.fresh_gate_cache:  # the links go with the run's gate cache; what they point at stays
            shutil.rmtree(scratch / "cache", ignore_errors=True)
        if not any(scratch.iterdir()):
            scratch.rmdir()
    say(len(todo), len(todo), rows[-1]["status"])
    # 3. every signature and hash of what was committed
    return _result(config, repo, rows, _cathrepo("verify", cwd=repo))


def _result(config: RepoBenchConfig, repo: Path, rows: list[dict[str, Any]],
            verify: subprocess.CompletedProcess[str] | None) -> dict[str, Any]:
    """The report; without ``verify`` (a partial result) ``verify_clean`` is None."""
    return {"data": str(config.data), "repo": str(repo), "method": config.method, "params": list(config.params),
            "worker": config.worker, "fresh_gate_cache": config.fresh_gate_cache,
            "restrain": config.restrain, "restrain_factor": config.restrain_factor if config.restrain else None,
            **summarize(rows), "verify_clean": None if verify is None else verify.returncode == 0,
            "verify": "" if verify is None else _last_line(verify.stdout if verify.returncode == 0 else verify.stderr),
            "records": rows}
