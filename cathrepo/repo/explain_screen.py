"""What ``explain`` reads besides the answer: how much each delta touches a prompt, and each edit's provenance.

The screen's number for an edit is exact at first order: in one forward pass of the served model over
the prompt and its answer, the input ``x`` of every module an edit changes is captured, and the edit's
own change to that module's output, ``ΔW x = scale · (x Aᵀ) Bᵀ``, is compared with the output itself,
position by position. Removing the edit changes the first module it touches by exactly ``−ΔW x`` (the
layers below see the same inputs); an edit whose ``ΔW x`` is negligible at every position and module
barely moves anything downstream. A ROME key is specific to its subject, so an edit about another
subject scores near zero. The number is a screen, not a measurement: ``explain`` checks it by removing
all screened edits at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import CathrepoError
from cathrepo.repo import layout

if TYPE_CHECKING:
    from cathrepo.repo import Repo
    from cathrepo.repo.state import ActiveEdit

#: The namespace approvals are signed in (``edits/<id>/approvals/*.sig``).
APPROVAL_NAMESPACE = "cathrepo-approval"


def activation_scores(model: Any, seq: Sequence[int], edits: Sequence[ActiveEdit]) -> dict[str, float | None]:
    """Per edit, max over its modules and the positions that predict answer tokens of
    ``‖ΔW x‖ / ‖W x‖`` (None where a module's input could not be captured: such an edit is measured)."""
    import torch

    from cathrepo.lm.hooks import capture
    from cathrepo.models import model_device

    names = sorted({name for e in edits for name in e.delta.factors})
    with torch.no_grad(), capture(model, names, inputs=True, outputs=True) as seen:
        model(input_ids=torch.tensor([list(seq)], device=model_device(model)))
    out: dict[str, float | None] = {}
    for edit in edits:
        worst = 0.0
        for name, factor in edit.delta.factors.items():
            x, y = seen.inputs.get(name), seen.outputs.get(name)
            if x is None or y is None or x.shape[-1] != factor.A.shape[1]:
                worst = math.nan  # not captured: no evidence, so the edit is measured
                break
            x, y = x[0, :-1].float(), y[0, :-1].float()  # (seq-1, in), (seq-1, out): the last predicts nothing
            a = factor.A.to(x.device, torch.float32)
            b = factor.B.to(x.device, torch.float32) * factor.scale
            change = ((x @ a.T) @ b.T).norm(dim=-1)  # (seq-1,)
            ratio = change / y.norm(dim=-1).clamp_min(1e-12)
            worst = max(worst, float(ratio.max()))
        out[edit.id] = None if math.isnan(worst) else worst
    return out


def provenance(repo: Repo, sha: str, edits: Sequence[ActiveEdit], *, verified: bool) -> dict[str, dict[str, Any]]:
    """Per edit: source, author, created, risk, confidence, method, the principal whose ``edit.sig``
    verifies (or what is wrong with it) and the approvals present in ``edits/<id>/approvals/``."""
    from cathrepo.repo.state import signers_at

    listing = repo.git.list_tree(sha, layout.EDITS) if edits else {}
    wanted = {path: oid for path, (kind, oid) in listing.items() if kind == "blob" and _read_for_provenance(path)}
    data = repo.git.read_objects(list(wanted.values()))
    files = {path: data[oid] for path, oid in wanted.items()}
    signers = signers_at(repo, sha) if edits else []
    out = {}
    for edit in edits:
        record = edit.record
        raw = files.get(layout.edit_path(edit.id, layout.RECORD), b"")
        prefix = layout.edit_path(edit.id, "approvals/")
        approvals = [_approval(path.removeprefix(prefix), blob, raw, signers)
                     for path, blob in sorted(files.items()) if path.startswith(prefix)]
        out[edit.id] = {"source": record.source, "author": record.author, "created": record.created,
                        "risk": record.risk, "confidence": record.confidence, "method": record.method,
                        "proposal": record.proposal, "verified_on_load": verified,
                        "signature": _signature(files.get(layout.edit_path(edit.id, layout.SIGNATURE)), raw, signers),
                        "approvals": approvals}
    return out


def _read_for_provenance(path: str) -> bool:
    parts = path.split("/")
    return (len(parts) == 3 and parts[2] in (layout.RECORD, layout.SIGNATURE)) or \
        (len(parts) == 4 and parts[2] == "approvals")


def _signature(envelope: bytes | None, raw: bytes, signers: list[Any]) -> dict[str, Any]:
    """``{"status": "verified", "signer": principal}`` or ``{"status": "invalid", "problem": ...}``."""
    from cathrepo.provenance.signing import verify_payload

    if envelope is None:
        return {"status": "missing"}
    try:
        principal = verify_payload(json.loads(envelope), raw, signers, what=layout.SIGNATURE)
    except (CathrepoError, ValueError) as exc:
        return {"status": "invalid", "problem": getattr(exc, "message", str(exc))}
    return {"status": "verified", "signer": principal}


def _approval(name: str, envelope: bytes, raw: bytes, signers: list[Any]) -> dict[str, Any]:
    """One file of ``approvals/``: whose signature over the record it carries, if it verifies against the
    revision's allowed signers. Whether it counts toward a policy (revocation times, not the author's own)
    is the approvals code's to say; this reports what is there."""
    from cathrepo.provenance.signing import verify_payload

    try:
        principal = verify_payload(json.loads(envelope), raw, signers, namespace=APPROVAL_NAMESPACE,
                                   what=f"approvals/{name}")
    except (CathrepoError, ValueError) as exc:
        return {"file": name, "status": "invalid", "problem": getattr(exc, "message", str(exc))}
    return {"file": name, "status": "verified", "signer": principal}
