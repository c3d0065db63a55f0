"""The demo behind `make demo`: every step is a real `cathrepo` command on the embedded model.

init a repository in a temporary directory, edit three CounterFact facts, show generations before and
after, log, verify, revert one edit and show its answer restored, verify again.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
FACTS = HERE / "docs" / "demo-facts.json"


def run(*args: str, cwd: Path, capture: bool = False) -> str:
    print(f"\n$ cathrepo {' '.join(shlex.quote(a) for a in args)}", flush=True)
    proc = subprocess.run(["cathrepo", *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        sys.exit(f"demo: 'cathrepo {args[0]}' failed with exit code {proc.returncode}")
    if capture:
        print(proc.stdout, end="", flush=True)
    return proc.stdout or ""


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="cathrepo-demo-"))
    repo = work / "repo"
    facts = json.loads(FACTS.read_text())
    print(f"== cathrepo demo in {repo}")
    run("init", str(repo), cwd=work)
    print("\n== Before: what the base model says")
    for fact in facts:
        run("generate", fact["prompt"], "--max-new-tokens", "8", cwd=repo)
    print("\n== Edit three facts (ROME), each gated, then committed and signed")
    run("edit", "--file", str(FACTS), "--source", "demo:counterfact", cwd=repo)
    log = json.loads(subprocess.run(["cathrepo", "log", "--json"], cwd=repo, text=True, check=True,
                                    stdout=subprocess.PIPE).stdout)
    edits = [{"id": e["edit_id"]} for e in reversed(log) if e["action"] == "edit"]  # oldest first
    print("\n== After: the edited model")
    for fact in facts:
        run("generate", fact["prompt"], "--max-new-tokens", "8", cwd=repo)
    run("log", cwd=repo)
    run("show", edits[0]["id"], cwd=repo)
    run("verify", cwd=repo)
    print(f"\n== Revert the first edit ({edits[0]['id']}); its answer is restored")
    run("revert", edits[0]["id"], cwd=repo)
    run("generate", facts[0]["prompt"], "--max-new-tokens", "8", cwd=repo)
    run("verify", cwd=repo)
    run("status", cwd=repo)
    print(f"\n== Done. The repository is at {repo}")


if __name__ == "__main__":
    main()
