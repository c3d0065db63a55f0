"""``cathrepo trace``: locate where a fact lives; write the scores as JSON and the heatmaps as PNG."""

from __future__ import annotations

from pathlib import Path

import click

ALL_METHODS = ("causal_trace", "patching", "saliency")


@click.command("trace")
@click.option("--prompt", required=True, help="The prompt, containing the subject verbatim.")
@click.option("--subject", required=True, help="The subject (corrupted by causal tracing).")
@click.option("--target", default=None, help="The answer to measure (default: the model's own next token).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for scores.json and the PNG heatmaps.")
@click.option("--model", "model_src", default=None, help="Model directory or embedded:<name> (default: embedded).")
@click.option("--components", default="hidden,mlp,attn", show_default=True, help="Components, comma-separated.")
@click.option("--samples", default=3, show_default=True, type=click.IntRange(1), help="Noise samples per run.")
@click.option("--method", "methods", default="causal_trace", show_default=True,
              type=click.Choice([*ALL_METHODS, "all"]), help="Attribution method.")
@click.option("--seed", default=0, show_default=True, help="Noise seed.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16"]),
              help="Causal-trace runs in bfloat16 where that is fast (auto), or exact float32.")
def trace_cmd(prompt: str, subject: str, target: str | None, out_dir: Path, model_src: str | None, components: str,
              samples: int, methods: str, seed: int, precision: str) -> None:
    """Trace PROMPT's answer through the layers (causal tracing, patching, saliency)."""
    from cathrepo.attribution.plots import write_results
    from cathrepo.attribution.select import run_methods
    from cathrepo.models import load_model, resolve_model

    model, tokenizer = load_model(resolve_model(model_src).path)
    chosen = ALL_METHODS if methods == "all" else (methods,)
    results = run_methods(model, tokenizer, prompt, subject, target, methods=chosen,
                          components=[k.strip() for k in components.split(",") if k.strip()], samples=samples, seed=seed,
                          precision=precision)
    for name, result in results.items():
        click.echo(f"{name}: p({result.target!r}) low {result.low:.4f} high {result.high:.4f} "
                   f"({result.meta.get('seconds', 0):.1f} s)")
    for path in write_results(results, out_dir):
        click.echo(f"wrote {path}")
