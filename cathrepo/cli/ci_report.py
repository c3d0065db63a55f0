"""The Markdown report of ``cathrepo ci``: a CI job summary or a pull-request comment.

One table per proposal (its gates, and the answer before and after) and one for the merge gates, with
the MMLU sample's size and noise stated next to its score, and the approvals each new edit has and needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cathrepo.gates.results import GateReport
    from cathrepo.repo.ci import CiReport


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


def gate_table(report: GateReport) -> list[str]:
    """The report's own Markdown table (:meth:`~cathrepo.gates.results.GateReport.to_markdown`), without
    its heading: gate, verdict, what it measured, the limits, why it failed."""
    return [line for line in report.to_markdown().splitlines()[1:] if line]


def markdown(report: CiReport) -> str:
    """The whole report (ends with a newline)."""
    verdict = "passed" if report.passed else "FAILED"
    out = [f"## cathrepo ci: {verdict}",
           "",
           f"Branch head `{report.head_commit[:12]}` into `{report.base}` (`{report.base_commit[:12]}`).",
           ""]
    v = report.verify
    out.append(f"**Verify:** {v.commits} commits, {v.edits} edits, {v.files} files: "
               + ("every signature and hash holds." if v.ok else f"{len(v.issues)} issue(s)."))
    out += [f"- `{i}`" for i in v.issues]
    out.append("")
    if report.proposals:
        out += ["### Proposals", "", "| proposal | fact | status | edit | commit |", "|---|---|---|---|---|"]
        out += [f"| `{p.proposal}` | {_cell(p.summary)} | {p.status} | {p.edit_id or ''} | "
                f"{(p.commit or '')[:12]} |" for p in report.proposals]
        for p in report.proposals:
            out += ["", f"#### `{p.proposal}` {_cell(p.summary)}: {p.status}", ""]
            out += [f"- `{i}`" for i in p.issues]
            out += [f"- `{_cell(a['prompt'])}` before: `{_cell(a['before'])}`; after: `{_cell(a['after'])}`"
                    for a in p.answers]
            if p.report is not None:
                out += ["", *gate_table(p.report)]
        out.append("")
    if report.merge is not None:
        out += [f"### Merge gates: {len(report.union)} active edit(s) after the merge, "
                f"{len(report.new_edits)} new to `{report.base}`", "", *gate_table(report.merge)]
        noise = report.mmlu_noise()
        if noise is not None:
            out += ["", f"MMLU sample: {noise['n']:.0f} questions, base accuracy {noise['accuracy']:.3f}, "
                        f"standard error ±{noise['stderr']:.3f} (a change smaller than "
                        f"{2 * noise['stderr']:.3f} is within this sample's noise)."]
        out.append("")
    elif v.ok:
        out += ["Nothing new to merge: the union of the two branches is the base branch's active set.", ""]
    if report.approvals:
        out += ["### Approvals", "", "| edit | fact | risk | approvals | needed | approvers |", "|---|---|---|---|---|---|"]
        out += [f"| `{a.edit_id}` | {_cell(a.summary)} | {a.tier} | {len(a.approvers)} | {a.required} | "
                f"{_cell(', '.join(a.approvers))} |" for a in report.approvals]
        out += [f"- `{i}`" for a in report.approvals for i in a.issues]
        out.append("")
    return "\n".join(out) + "\n"
