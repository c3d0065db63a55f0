"""The demo behind `make demo`: every step is a real `cathrepo` command on the embedded model.

In a fresh repository, for each fact of docs/demo-facts.json: the model's answer before, the edit with
its gate table (a signed commit), the answer after. Then the last edit is reverted and its prompt must
give, character for character, the answer it gave before that edit; `cathrepo verify` closes.

A fact the gates refuse is shown as the refusal it is (which gate failed, by how much, which layers were
tried): the demo then checks that nothing was committed (the same HEAD, the same answer, `cathrepo
verify` clean) and goes on. Any other failure stops the demo with its exit status, and so does a run in
which no edit was committed or the revert does not restore the answer.

The commands run through a `cathrepo worker` of the demo's own, started after `cathrepo init` and
stopped at the end, so the model is loaded once rather than by every command.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
FACTS = HERE / "docs" / "demo-facts.json"
TOKENS = "8"
REFUSED = 4  # cathrepo's exit status for an edit its gates refused


def run(*args: str, cwd: Path, show: bool = True, allow: tuple[int, ...] = ()) -> str:
    """Run `cathrepo ARGS`, echo the command and its output, return stdout; exit on failure (an exit
    status in ``allow`` is an outcome the caller handles)."""
    if show:
        print(f"\n$ cathrepo {' '.join(shlex.quote(a) for a in args)}", flush=True)
    proc = subprocess.run(["cathrepo", *args], cwd=cwd, text=True, capture_output=True)
    if show or proc.returncode != 0:  # results first, then notes and errors (a refusal's gate table)
        print(proc.stdout, end="", flush=True)
        print(proc.stderr, end="", file=sys.stdout if proc.returncode in allow else sys.stderr, flush=True)
    if proc.returncode != 0 and proc.returncode not in allow:
        sys.exit(f"demo: 'cathrepo {args[0]}' failed with exit status {proc.returncode}")
    return proc.stdout


def head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, text=True, capture_output=True,
                          check=True).stdout.strip()


def answer(prompt: str, repo: Path) -> str:
    """The greedy continuation `cathrepo generate` prints after the prompt."""
    return run("generate", prompt, "--max-new-tokens", TOKENS, cwd=repo).strip().removeprefix(prompt).strip()


def _line(text: str) -> str:
    return " ".join(text.split())


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="cathrepo-demo-"))
    repo = work / "repo"
    print(f"== cathrepo demo in {repo}")
    run("init", str(repo), cwd=work)
    os.environ["CATHREPO_WORKER_SOCKET"] = str(work / "worker.sock")  # the demo's own, not the user's
    run("worker", "start", cwd=repo)
    try:
        demo(work, repo)
    finally:
        run("worker", "stop", cwd=repo, show=False)


def demo(work: Path, repo: Path) -> None:
    facts = json.loads(FACTS.read_text())
    rows = []
    for i, fact in enumerate(facts, 1):
        prompt, new, old = fact["prompt"], fact["target_new"], fact["ground_truth"]
        print(f"\n== Fact {i}/{len(facts)}: {prompt} -> {new} (was: {old}), CounterFact case {fact['case_id']}")
        before = answer(prompt, repo)
        path = work / f"fact-{i}.json"
        path.write_text(json.dumps([fact], indent=1) + "\n")
        start = head(repo)
        run("edit", "--file", str(path), "--source", f"demo:counterfact#{fact['case_id']}", cwd=repo,
            allow=(REFUSED,))
        after = answer(prompt, repo)
        committed = head(repo) != start
        if not committed:
            print("\n== Refused: nothing was committed and the model answers as before")
            if after != before:
                sys.exit(f"demo: a refused edit changed the answer from {before!r} to {after!r}")
            run("verify", cwd=repo)
        rows.append((prompt, new, before, after, committed))
    log = json.loads(run("log", "--json", cwd=repo, show=False))
    edits = [e["edit_id"] for e in log if e["action"] == "edit"]  # newest first
    if not edits:
        sys.exit("demo: the gates refused every demo fact; nothing was committed")
    last = edits[0]
    run("log", cwd=repo)
    run("verify", cwd=repo)

    last_prompt, _, last_before, _, _ = [row for row in rows if row[4]][-1]
    print(f"\n== Revert the last edit ({last}): its prompt must answer exactly as before the edit")
    run("revert", last, cwd=repo)
    restored = answer(last_prompt, repo)
    run("verify", cwd=repo)

    print("\n== Summary (+: the answer after the edit contains the new target; refused: nothing committed)")
    for prompt, new, before, after, committed in rows:
        mark = ("+" if new.lower() in after.lower() else "-") if committed else "refused"
        print(f"  {mark} {prompt} ...\n      before: {_line(before)}\n      after:  {_line(after)}")
    print(f"  reverted: {last_prompt} ... {_line(restored)}")
    if restored != last_before:
        sys.exit(f"demo: after the revert the model answers {restored!r}, before the edit it answered "
                 f"{last_before!r}")
    print(f"\n== Done: the revert restored the answer exactly. The repository is at {repo}")


if __name__ == "__main__":
    main()
