"""The merge benchmark behind ``cathrepo bench merge``: the time of ``ci``, ``merge`` + ``consolidate``
and a ``revert`` inside a pack, on a repository of N edits.

The repository is built like ``bench scale``'s (synthetic rank-one edits, complete and signed); a branch
``feature`` adds one more. Then, each timed over several runs from the same state (the commits a run
makes are taken back with ``git reset --hard`` before the next):

- ``ci``: on ``feature``, verify and the merge-stage gates of its union with ``main`` (no proposal, so
  the time is what grows with N; realising a proposal adds one gated edit, see "A gated edit's wall");
- ``merge``: on ``main``, ``cathrepo merge feature --strategy cat``: the merge gates, the merge commit,
  then the pack of all N + 1 edits, its gates and its commit;
- ``revert``: one edit inside that pack: the pack folded again from the other N, the revert gates, the
  commit.

Synthetic edits do not say their targets, so the efficacy family refuses them: every verb runs with
``force`` (the gates still run and are recorded) and the time is that of the full path.

Gates cache each state's measurements on disk (keyed by the state's deltas), so the first run of a verb
measures both states and a rerun of the same change reads them back: ``*_first_s`` (nothing cached: an
upper bound, since in a repository the state before a change was usually measured by the commit that
made it) and ``*_warm_s`` (the median of the later runs: a lower bound) are reported apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class MergeBenchConfig:
    repo: Path
    n: int = 10
    runs: int = 3
    base: str | None = None


def _timed(repo_root: Path, reset_to: str | None, fn: Callable[[], Any], runs: int) -> tuple[float, list[float], Any]:
    """Median seconds of ``fn`` over the runs after the first (the first alone when ``runs`` is 1), every
    run's seconds, and the last result; the repository is reset to ``reset_to`` after each run."""
    from cathrepo.repo import Repo
    from cathrepo.repo.branch import sync_weights

    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if reset_to is not None:
            repo = Repo.open(repo_root)
            repo.git.run(["reset", "-q", "--hard", reset_to])
            sync_weights(repo)
    return statistics.median(times[1:] or times), [round(t, 3) for t in times], out


def bench_merge(config: MergeBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build the repository (main with N edits, feature with one more) and time ci, merge, revert."""
    from cathrepo.bench.scale import build_history
    from cathrepo.repo import Repo, layout

    if config.n < 2 or config.runs < 1:
        raise InvalidInputError("--n must be at least 2 and --runs at least 1.")
    root = config.repo
    repo = Repo.open(root) if (root / layout.CONFIG).is_file() else Repo.init(root, base=config.base)
    if repo.git.current_branch() != "main":
        repo.checkout("main")
    build_history(repo, config.n, progress=progress)
    if "feature" not in {b.name for b in repo.branches()}:
        repo.create_branch("feature")
        repo.checkout("feature")
        build_history(repo, config.n + 1, seed=1, progress=progress)
        repo.checkout("main")
    main_tip = repo.git.rev_parse("main")
    repo.checkout("feature")
    ci_s, ci_runs, ci = _timed(root, None, lambda: Repo.open(root).ci(base="main"), config.runs)
    repo.checkout("main")
    merge_s, merge_runs, merged = _timed(
        root, main_tip, lambda: Repo.open(root).merge("feature", strategy="cat", force=True), config.runs)
    done = Repo.open(root).merge("feature", force=True)  # the state the revert starts from: merged, packed
    Repo.open(root).consolidate(strategy="cat", force=True)
    packed = repo.git.rev_parse("HEAD")
    victim = Repo.open(root).stack().active[len(Repo.open(root).stack().active) // 2]
    revert_s, revert_runs, _ = _timed(root, packed, lambda: Repo.open(root).revert(victim, force=True), config.runs)
    repo.git.run(["reset", "-q", "--hard", main_tip])
    return {"repo": str(root), "edits": config.n, "runs": config.runs,
            "ci_first_s": ci_runs[0], "ci_warm_s": round(ci_s, 3), "ci_runs": ci_runs, "ci_new_edits": len(ci.new_edits),
            "merge_consolidate_first_s": merge_runs[0], "merge_consolidate_warm_s": round(merge_s, 3),
            "merge_runs": merge_runs, "merge_pack": merged.extra.get("pack"),
            "merge_pack_refused": merged.extra.get("pack_refused"),
            "revert_in_pack_first_s": revert_runs[0], "revert_in_pack_warm_s": round(revert_s, 3),
            "revert_runs": revert_runs, "union": len(done.active)}
