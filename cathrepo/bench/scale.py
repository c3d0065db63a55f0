"""The repository-scale benchmark behind ``cathrepo bench scale``: a repository of N edits, timed.

It builds (or extends) a repository to N *synthetic* edits, then times what users run on it: ``log``,
``verify`` (every commit signature, every edit signature, every file hash) and materializing the model at
HEAD. Each synthetic edit is complete and real in everything but its numbers: a random rank-one delta on
the default edit layer, saved as PEFT files, the weights handed to the DVC cache behind a ``.dvc``
pointer, a record (method ``synthetic``, one skipped gate saying no gate ran) signed like any other, and
a signed commit of its own. Only the first is committed through :func:`~cathrepo.repo.commit.commit_edit`
(real DVC, git signing through ssh-keygen); the others copy its pointer format and are written in bulk:

1. every edit's files into the work tree and its weights into the DVC cache, as ``commit_edit`` would;
2. one ``git fast-import`` stream makes the commits (unsigned) with their trees and blobs in one pack;
3. each commit is re-written on its signed parent with an SSH signature made in-process (the SSHSIG that
   ssh-keygen makes, :mod:`cathrepo.provenance.commit_signatures`), so no process starts per commit;
   ``git verify-commit`` accepts them. The unsigned ones are dropped by ``git gc --prune=now``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError, StorageError
from cathrepo.repo import layout

if TYPE_CHECKING:
    from cathrepo.delta import Delta
    from cathrepo.repo import Repo

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
BUILD_REF = "refs/cathrepo/scale-build"
#: Size of each synthetic delta against the weight it edits (a small edit: the model stays fluent).
RELATIVE_NORM = 1e-3


@dataclass(frozen=True)
class ScaleBenchConfig:
    """What ``cathrepo bench scale`` builds and times."""

    repo: Path
    n: int = 1000
    base: str | None = None
    runs: int = 3
    seed: int = 0


def synthetic_delta(shape: tuple[int, int], module: str, weight_norm: float, index: int, seed: int) -> Delta:
    """A random rank-one delta on ``module`` whose norm is :data:`RELATIVE_NORM` of the weight's."""
    import torch

    from cathrepo.delta import Delta, LowRank

    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    b, a = torch.randn(shape[0], 1, generator=gen), torch.randn(1, shape[1], generator=gen)
    scale = RELATIVE_NORM * weight_norm / float(b.norm() * a.norm())
    return Delta({module: LowRank(B=b * scale, A=a)})


def _edit_result(i: int, delta: Delta, module: str) -> tuple[Any, Any]:
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.probes import Probe, ProbeSet
    from cathrepo.facts.schema import EditRequest, Fact
    from cathrepo.gates.results import GateReport, GateResult

    fact = Fact(prompt=f"The synthetic attribute of Subject {i} is", subject=f"Subject {i}",
                target_new=f"value {i}", target_true=f"old value {i}")
    probes = ProbeSet((Probe("rewrite", fact.prompt, fact.target_new, fact.target_true),), subject=fact.subject)
    report = GateReport((GateResult("synthetic", True, detail="a synthetic edit of `cathrepo bench scale`: "
                                    "no gate ran", skipped=True),), stage="edit")
    result = EditResult(delta=delta, site={"modules": [module], "component": "mlp_out"}, facts=(fact,),
                        probes=probes, report=report, info={"synthetic": True})
    return EditRequest(fact, source="cathrepo bench scale", author="bench"), result


def _git(root: Path, *args: str, data: bytes | None = None) -> bytes:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    done = subprocess.run(["git", *args], cwd=root, input=data, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise StorageError(f"git {args[0]} failed while building the benchmark repository: "
                           f"{done.stderr.decode(errors='replace').strip()[:300]}")
    return done.stdout


def _data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


def _write_loose(git_dir: Path, kind: str, body: bytes) -> str:
    """Write a git object as a loose object (git's own format) and return its id."""
    raw = f"{kind} {len(body)}\0".encode() + body
    sha = hashlib.sha1(raw).hexdigest()  # noqa: S324 - git's object naming, not a security use
    path = git_dir / "objects" / sha[:2] / sha[2:]
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".tmp-{sha[2:]}")
        tmp.write_bytes(zlib.compress(raw, 1))
        tmp.rename(path)
    return sha


def build_history(repo: Repo, n: int, *, seed: int = 0, progress: Progress | None = None) -> int:
    """Add synthetic edits to ``repo`` until its active set holds ``n``; returns how many were added."""
    from cathrepo.models import default_edit_layer, family_for, get_module, weight_shape
    from cathrepo.provenance.commit_signatures import sign_commit_payload, signed_commit
    from cathrepo.provenance.signing import sign_payload, write_envelope
    from cathrepo.repo.commit import build_edit_files, commit_edit, edit_trailers
    from cathrepo.repo.layout import Stack

    say = progress or (lambda stage, done, total: None)
    have = len(repo.stack().active)
    if have >= n:
        return 0
    if repo.git.status_porcelain():
        raise InvalidInputError(f"{repo.root} has uncommitted changes; the benchmark adds commits to a clean tree.")
    model, _ = repo.load_base()
    family = family_for(model)
    module = family.layer_name("mlp_out", default_edit_layer(model))
    weight = get_module(model, module).weight
    shape, norm = weight_shape(get_module(model, module)), float(weight.detach().float().norm())
    del model
    start = have
    if start == 0:  # the first through the real path: DVC's pointer and git's signature as they are
        request, result = _edit_result(0, synthetic_delta(shape, module, norm, 0, seed), module)
        commit_edit(repo, request, result, method="synthetic", params={"seed": seed})
        start = 1
    tip = repo.git.head()
    assert tip is not None
    active = list(repo.stack().active)
    first = active[-1]
    pointer_text = repo.git.show_file(tip, layout.edit_path(first, layout.WEIGHTS_POINTER))
    ignore_text = repo.git.show_file(tip, layout.edit_path(first, f"{layout.DELTA_DIR}/.gitignore"))
    assert pointer_text is not None and ignore_text is not None
    md5_first, size_first, _ = repo.storage.read_pointer(pointer_text)
    template = pointer_text.decode().replace(md5_first, "{md5}").replace(f"size: {size_first}\n", "size: {size}\n")
    if "{md5}" not in template or "{size}" not in template:
        raise StorageError("This DVC writes pointers in a form the benchmark cannot copy.")
    key = repo.signing_key()
    name = repo.git.config_get("user.name") or "cathrepo"
    email = repo.git.config_get("user.email") or "cathrepo@localhost"
    cache_root = repo.storage.cache_root()
    now = int(time.time()) - (n - start)
    branch = repo.git.current_branch() or "main"
    feed = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=repo.root, stdin=subprocess.PIPE,
                            env={**os.environ, "LC_ALL": "C"})
    assert feed.stdin is not None
    try:
        feed.stdin.write(f"reset {BUILD_REF}\nfrom {tip}\n\n".encode())
        for i in range(start, n):
            say("edits", i, n)
            request, result = _edit_result(i, synthetic_delta(shape, module, norm, i, seed), module)
            staging = repo.root / layout.EDITS / f".staging-{i}"
            staging.mkdir()
            record = build_edit_files(repo, request, result, method="synthetic", params={"seed": seed},
                                      computed_on=active, staging=staging)
            raw = record.to_bytes()
            eid = record.id
            (staging / layout.RECORD).write_bytes(raw)
            write_envelope(staging / layout.SIGNATURE, sign_payload(key, raw))
            weights = (staging / layout.WEIGHTS).read_bytes()
            md5 = hashlib.md5(weights).hexdigest()  # noqa: S324 - DVC's object id
            obj = cache_root / md5[:2] / md5[2:]
            if not obj.exists():
                obj.parent.mkdir(parents=True, exist_ok=True)
                obj.write_bytes(weights)
                obj.chmod(0o444)
            (staging / layout.WEIGHTS_POINTER).write_text(template.format(md5=md5, size=len(weights)))
            (staging / layout.DELTA_DIR / ".gitignore").write_bytes(ignore_text)
            staging.rename(repo.root / layout.edit_path(eid))
            active.append(eid)
            stack = Stack(tuple(active)).to_bytes()
            (repo.root / layout.STACK).write_bytes(stack)
            trailers = edit_trailers(record, eid, result.gates)
            message = (f"Edit {eid}: {record.summary}\n\nMethod synthetic; was: {result.fact.target_true}; "
                       f"risk {record.risk}; source {record.source}.\n\n"
                       + "".join(f"{k}: {v}\n" for k, v in trailers.items()))
            stamp = f"{now + i} +0000"
            feed.stdin.write(f"commit {BUILD_REF}\nauthor {name} <{email}> {stamp}\n"
                             f"committer {name} <{email}> {stamp}\n".encode() + _data(message.encode()))
            for rel in (layout.RECORD, layout.SIGNATURE, layout.ADAPTER_CONFIG, layout.WEIGHTS_POINTER,
                        f"{layout.DELTA_DIR}/.gitignore", layout.PROBES, layout.DATA):
                path = layout.edit_path(eid, rel)
                feed.stdin.write(f"M 100644 inline {path}\n".encode() + _data((repo.root / path).read_bytes()))
            feed.stdin.write(f"M 100644 inline {layout.STACK}\n".encode() + _data(stack) + b"\n")
        feed.stdin.write(b"done\n")
        feed.stdin.close()
        if feed.wait() != 0:
            raise StorageError("git fast-import failed while building the benchmark repository.")
    finally:
        if feed.poll() is None:
            feed.kill()
    # re-write each commit on its signed parent, signed
    say("signing", 0, n - start)
    shas = _git(repo.root, "rev-list", "--reverse", f"{tip}..{BUILD_REF}").decode().split()
    raws = repo.git.read_objects(shas)
    git_dir = Path(_git(repo.root, "rev-parse", "--absolute-git-dir").decode().strip())
    parent = tip
    for k, sha in enumerate(shas):
        lines = raws[sha].split(b"\n")
        lines = [f"parent {parent}".encode() if line.startswith(b"parent ") else line for line in lines]
        payload = b"\n".join(lines)
        parent = _write_loose(git_dir, "commit", signed_commit(payload, sign_commit_payload(key, payload)))
        if k % 500 == 0:
            say("signing", k, len(shas))
    _git(repo.root, "update-ref", f"refs/heads/{branch}", parent, tip)
    _git(repo.root, "update-ref", "-d", BUILD_REF)
    _git(repo.root, "reset", "-q")  # the index to the new HEAD; the work tree already holds its files
    say("packing", 0, 1)
    _git(repo.root, "gc", "--quiet", "--prune=now")
    repo.git.close()
    return n - have


def _median_seconds(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_scale(config: ScaleBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build the repository to ``config.n`` edits and time log, verify (``--full``, then with the verified
    index warm) and materialize on it."""
    from cathrepo.repo import Repo

    if config.n < 1 or config.runs < 1:
        raise InvalidInputError("--n and --runs must be at least 1.")
    root = config.repo
    repo = Repo.open(root) if (root / layout.CONFIG).is_file() else Repo.init(root, base=config.base)
    t0 = time.perf_counter()
    added = build_history(repo, config.n, seed=config.seed, progress=progress)
    build_s = time.perf_counter() - t0
    repo = Repo.open(root)
    edits = len(repo.stack().active)
    log_s, entries = _median_seconds(lambda: Repo.open(root).log(), config.runs)
    full_s, report = _median_seconds(lambda: Repo.open(root).verify(full=True), config.runs)
    Repo.open(root).verify()  # fills the verified index (.git/cathrepo/verified)
    verify_s, indexed = _median_seconds(lambda: Repo.open(root).verify(), config.runs)
    hashed = sum(p.stat().st_size for p in (root / layout.EDITS).rglob("*") if p.is_file())
    base_s, _ = _median_seconds(lambda: Repo.open(root).load_base(), config.runs)
    mat_s, mat = _median_seconds(lambda: Repo.open(root).materialize(), config.runs)
    return {"repo": str(root), "edits": edits, "commits": report.commits, "added": added,
            "build_s": round(build_s, 2), "log_s": round(log_s, 3), "log_entries": len(entries),
            "verify_full_s": round(full_s, 3), "verify_s": round(verify_s, 3), "verify_ok": report.ok and indexed.ok,
            "verify_issues": [str(i) for i in report.issues[:5]], "edit_bytes": hashed,
            "verify_full_mb_per_s": round(hashed / full_s / 1e6, 1), "verify_mb_per_s": round(hashed / verify_s / 1e6, 1),
            "load_base_s": round(base_s, 3), "materialize_s": round(mat_s, 3),
            "materialize_over_base_s": round(mat_s - base_s, 3), "materialized_edits": len(mat.edits),
            "weights_bytes_per_edit": _weights_size(repo), "runs": config.runs}


def _weights_size(repo: Repo) -> int | None:
    active = repo.stack().active
    if not active:
        return None
    pointer = repo.git.show_file("HEAD", layout.edit_path(active[-1], layout.WEIGHTS_POINTER))
    return None if pointer is None else repo.storage.read_pointer(pointer)[1]

