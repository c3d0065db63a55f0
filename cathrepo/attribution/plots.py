"""Heatmaps of attribution scores, drawn like ROME's causal-tracing figures (stage ③).

Layers run along x, the prompt's tokens down y, the subject's tokens are starred, one colour map per
component (purple: residual stream, green: MLP, red: attention, as in Meng et al. 2022, Fig. 1).
Figures are drawn on matplotlib's Agg canvas directly, so nothing touches the global pyplot state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cathrepo.attribution import ScoreMap

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
COMPONENT_LABELS = {"hidden": "single restored layer", "mlp": "MLP", "attn": "Attention"}
TITLES = {
    "causal_trace": "Impact of restoring {what} after corrupted input",
    "patching": "Patching the teacher's {what} into the student",
    "saliency": "Gradient × activation of {what}",
}
COLORBAR = {"causal_trace": "p({target})", "patching": "p({target})", "saliency": "∂log p({target})/∂a · a"}


def _labels(result: ScoreMap) -> list[str]:
    s0, s1 = result.subject_range
    return [repr(tok.replace("\n", "\\n"))[1:-1] + ("*" if s0 <= i < s1 else "") for i, tok in enumerate(result.tokens)]


def _draw(ax: Any, fig: Any, result: ScoreMap, component: str) -> None:
    import numpy as np

    data = np.asarray(result.scores[component], dtype=float).T  # (tokens, layers)
    if result.method == "saliency":
        bound = float(np.abs(data).max()) or 1.0
        image = ax.pcolormesh(data, cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        image = ax.pcolormesh(data, cmap=CMAPS.get(component, "Greys"), vmin=min(result.low, float(data.min())))
    ax.invert_yaxis()
    ax.set_yticks([0.5 + i for i in range(len(result.tokens))])
    ax.set_yticklabels(_labels(result), fontsize=8)
    layers = data.shape[1]
    step = max(1, layers // 6)
    ax.set_xticks([0.5 + i for i in range(0, layers, step)])
    ax.set_xticklabels(list(range(0, layers, step)), fontsize=8)
    what = {"hidden": "the residual stream", "mlp": "MLP outputs", "attn": "attention outputs"}[component]
    ax.set_title(TITLES[result.method].format(what=what), fontsize=9)
    ax.set_xlabel(f"layer ({COMPONENT_LABELS.get(component, component)})", fontsize=8)
    bar = fig.colorbar(image, ax=ax)
    bar.ax.set_title(COLORBAR[result.method].format(target=result.target.strip()), fontsize=8, y=-0.12)


def plot_trace(result: ScoreMap, out_dir: Path | str, *, prefix: str | None = None) -> list[Path]:
    """Write one PNG per component and one with the components side by side; return their paths.

    Args:
        result: a trace, patching or saliency ScoreMap.
        out_dir: the directory (created if missing).
        prefix: file-name prefix (default: the method name); files are ``<prefix>-<component>.png`` and
            ``<prefix>.png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or result.method
    height = 1.2 + 0.28 * len(result.tokens)
    paths = []
    for component in result.components:
        fig = Figure(figsize=(4.2, height), dpi=150)
        FigureCanvasAgg(fig)
        _draw(fig.add_subplot(1, 1, 1), fig, result, component)
        fig.tight_layout()
        path = out / f"{prefix}-{component}.png"
        fig.savefig(path)
        paths.append(path)
    fig = Figure(figsize=(4.2 * len(result.components), height), dpi=150)
    FigureCanvasAgg(fig)
    for i, component in enumerate(result.components):
        _draw(fig.add_subplot(1, len(result.components), i + 1), fig, result, component)
    fig.suptitle(f"{result.prompt!r} → {result.target!r}", fontsize=9)
    fig.tight_layout()
    path = out / f"{prefix}.png"
    fig.savefig(path)
    return [*paths, path]


def write_results(results: dict[str, ScoreMap], out_dir: Path | str) -> list[Path]:
    """Write ``scores.json`` (every method's ScoreMap) and each method's heatmaps into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = out / "scores.json"
    scores.write_text(json.dumps({k: v.to_json() for k, v in results.items()}, indent=1) + "\n")
    paths = [scores]
    for result in results.values():
        paths += plot_trace(result, out)
    return paths
