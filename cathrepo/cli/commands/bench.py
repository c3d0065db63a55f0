"""cathrepo bench edits|gates|repo|scale|serve|... [...]"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cathrepo.cli.commands.bench_stack import stack_cmd
from cathrepo.cli.run_options import run_options
from cathrepo.cli.shared import parse_params, progress

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group("bench")
def bench_group() -> None:
    """Benchmarks: edit quality and speed, gate speed."""


bench_group.add_command(stack_cmd)  # in a module of its own


@bench_group.command("edits")
@run_options()
@click.option("--sequential", is_flag=True, help="Apply all N edits to one model; score them, retention and MMLU at the end.")
@click.option("--known", type=_FILE, help="Known facts for neighbour mining and retention (default: shipped).")
@click.option("--mmlu-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="MMLU directory with dev/ and test/ (default: the shipped sample).")
@click.option("--mmlu-limit", type=int, default=0, show_default=True, help="Test questions per subject (0: all).")
@click.option("--no-mmlu", is_flag=True, help="Skip MMLU in --sequential runs.")
@click.option("--checkpoint", "checkpoints", type=click.IntRange(min=1), multiple=True, metavar="N",
              help="In --sequential runs, also measure the first N edits, retention and perplexity (not MMLU, measured at the end) (repeatable); with "
                   "--json each checkpoint is written as soon as it is measured.")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path),
              help="In --sequential runs, save the stack here at each checkpoint and resume from it when run again.")
@click.option("--save-every", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="With --state, also save the stack every N facts (not measured), so a cut run loses at most N edits.")
@click.option("--restrain", type=click.Choice(["clip", "prune"]),
              help="In --sequential runs, carry the stack restrained after every edit: singular values of each summed "
                   "update above the base weight's spectral norm clipped (or shrunk as PRUNE does).")
@click.option("--restrain-factor", type=float, default=1.0, show_default=True,
              help="With --restrain, the bound in multiples of the base weight's spectral norm.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def edits_cmd(data: Path, n: int, method: str, sequential: bool, edit_batch: int, model: str | None, params: tuple[str, ...],
              corpus: Path | None, skip: int, known: Path | None, mmlu_data: Path | None, mmlu_limit: int, no_mmlu: bool,
              checkpoints: tuple[int, ...], state: Path | None, save_every: int, restrain: str | None,
              restrain_factor: float, json_out: Path | None) -> None:
    """Edit N CounterFact/zsRE records and report ES, PS, NS, NS+, NKL, generation, retention, MMLU."""
    from cathrepo.bench.edits import EditBenchConfig, bench_edits

    config = EditBenchConfig(data=data, n=n, method=method, sequential=sequential, edit_batch=edit_batch, model=model,
                             params=parse_params(params), corpus=corpus, skip=skip, known=known, mmlu=not no_mmlu,
                             mmlu_data=mmlu_data, mmlu_limit=mmlu_limit, checkpoints=checkpoints, state=state,
                             save_every=save_every, restrain=restrain, restrain_factor=restrain_factor)
    if checkpoints and not sequential:
        raise click.UsageError("--checkpoint measures a --sequential run part way; add --sequential.")
    if restrain and not sequential:
        raise click.UsageError("--restrain holds a --sequential run's stack; add --sequential.")
    if save_every and not (sequential and state):
        raise click.UsageError("--save-every saves a --sequential run's stack to --state DIR; add both.")
    measured: list[dict[str, Any]] = []

    def keep(point: dict[str, Any]) -> None:  # a long run leaves what it has measured so far
        measured.append(point)
        if json_out:
            json_out.write_text(json.dumps({"partial": True, "method": method, "checkpoints": measured}, indent=2) + "\n")

    with progress("Benchmarking") as say:
        result = bench_edits(config, lambda stage, done, total: say(f"{stage} {done}/{total}"), keep)
    out = result.to_dict()
    for point in out["checkpoints"][:-1]:
        click.echo(f"after {point['edits']} edits: " + ", ".join(
            f"{k} {_fmt(point.get(k))}" for k in ("es", "ps", "ns", "gen_success", "gen_chat", "retention",
                                                  "perplexity_after", "norm_growth")))
    _table(f"{method} on {out['n']} records ({'sequential' if sequential else 'one edit per model'}), {out['model']}",
           out, out["unedited"])
    if json_out:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@bench_group.command("gates")
@click.option("--data", required=True, type=_FILE, help="CounterFact or zsRE records (probe sets are built from them).")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Active edits in the regression suite.")
@click.option("--model", help="Model directory or hub id (default: the embedded model).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Rows per forward pass.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Precision the suite is scored in.")
@click.option("--stage", type=click.Choice(["edit", "merge"]), default="edit", show_default=True,
              help="edit: rewrites of all edits, every kind for related ones; merge: every kind of every edit.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def gates_cmd(data: Path, n: int, model: str | None, batch_size: int, dtype: str, stage: str,
              json_out: Path | None) -> None:
    """Time the regression gate over N active edits (cold, and with the previous state cached)."""
    from cathrepo.bench.gates import GateBenchConfig, bench_gates

    config = GateBenchConfig(data=data, n=n, model=model, batch_size=batch_size, dtype=dtype, stage=stage)
    with progress("Benchmarking gates") as say:
        out = bench_gates(config, say)
    _table(f"regression gate over {out['n']} edits, {out['model']}", out, None)
    if json_out:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@bench_group.command("repo")
@click.option("--data", required=True, type=_FILE, help="CounterFact (flat or ROME layout) or zsRE records.")
@click.option("--n", "n", type=int, default=100, show_default=True, help="Records to edit, one commit each.")
@click.option("--skip", type=int, default=0, show_default=True, help="Skip the first records (with a true target).")
@click.option("--repo", "repo", type=click.Path(file_okay=False, path_type=Path),
              help="Edit this repository (created when missing; default: a fresh one in a temporary directory).")
@click.option("--base", metavar="MODEL", help="Base model of a repository this run creates (default: embedded).")
@click.option("--method", help="Edit method of every edit (default: the repository's).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Method parameter for every edit.")
@click.option("--worker", is_flag=True, help="Run the edits through a resident worker of the run's own "
                                           "(as after `cathrepo worker start`).")
@click.option("--fresh-gate-cache", is_flag=True,
              help="Keep the edits' gate measurements in a cache of the run's own, so a rerun on the same records "
                   "times every gate (models and statistics stay shared).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the per-record JSON here.")
@click.option("--resume", is_flag=True, help="Go on after the records a cut run with the same --data, --skip, "
                                             "--repo and --out already edited (its --out is read back).")
@click.option("--restrain", type=click.Choice(["clip", "prune"]),
              help="A repository this run creates applies its stack restrained ([stack] restrain, one commit); "
                   "one given must already.")
@click.option("--restrain-factor", type=float, default=1.0, show_default=True,
              help="With --restrain, the bound in multiples of each base weight's spectral norm.")
def repo_cmd(data: Path, n: int, skip: int, repo: Path | None, base: str | None, method: str | None,
             params: tuple[str, ...], worker: bool, fresh_gate_cache: bool, out: Path | None, resume: bool,
             restrain: str | None, restrain_factor: float) -> None:
    """Edit N records with one real `cathrepo edit` each into one repository with its gates: the share
    committed, refusals by gate, wall seconds per edit, and `cathrepo verify` at the end."""
    from cathrepo.bench.repo import RepoBenchConfig, bench_repo, resumed_rows

    parse_params(params)  # a malformed --param fails here, not once per record
    config = RepoBenchConfig(data=data, n=n, skip=skip, repo=repo, base=base, method=method, params=params,
                             worker=worker, fresh_gate_cache=fresh_gate_cache, restrain=restrain,
                             restrain_factor=restrain_factor)
    if resume and not (repo and out):
        raise click.UsageError("--resume reads back the cut run's --out and goes on in its --repo; pass both.")
    earlier = resumed_rows(config, out) if resume and out else []

    def keep(partial: dict[str, object]) -> None:
        if out:
            out.write_text(json.dumps(partial, indent=2) + "\n")

    with progress("Editing") as say:
        result = bench_repo(config, lambda done, total, last: say(f"{done}/{total} {last}".strip()), keep, earlier)
    title = (f"{result['n']} edits, one `cathrepo edit` each{' through a worker' if worker else ''}, "
             f"into {result['repo']}")
    rows = {k: result[k] for k in ("committed", "refused", "errors", "committed_share", "wall_median_s",
                                     "wall_p90_s", "wall_min_s", "wall_max_s", "verify_clean")}
    rows.update({f"refused by {gate}": count for gate, count in result["refusals_by_gate"].items()})
    rows["first_attempt_passed"] = result["first_attempt_passed"]
    rows.update({f"first attempt refused by {gate}": count
                 for gate, count in result["first_attempt_refusals_by_gate"].items()})
    rows.update({f"won by retry {kind}": count for kind, count in result["won_by_retry"].items()})
    rows["first_attempt_wall_median_s"] = result["first_attempt_wall_median_s"]
    _table(title, rows, None)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {out}")


@bench_group.command("calibrate")
@click.option("--data", required=True, type=_FILE, help="CounterFact (flat or ROME layout) or zsRE records.")
@click.option("--n", "n", type=int, default=20, show_default=True, help="Records (each gives one edit per variant).")
@click.option("--skip", type=int, default=5000, show_default=True, help="Skip the first records (tune on 5000+).")
@click.option("--variant", "variants", multiple=True, help="Variants to run (default: all; see --help of the module).")
@click.option("--config", "config_file", type=_FILE, help="A cathrepo.toml whose [gates] table judges (default: defaults).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="ROME parameter of the rome-based variants.")
@click.option("--gate", "gate_params", multiple=True, metavar="KEY=VALUE", help="[gates] key overriding the policy.")
@click.option("--overscale", type=float, default=4.0, show_default=True, help="Factor of the overscale variant.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def calibrate_cmd(data: Path, n: int, skip: int, variants: tuple[str, ...], config_file: Path | None,
                  params: tuple[str, ...], gate_params: tuple[str, ...], overscale: float,
                  json_out: Path | None) -> None:
    """Each edit-stage gate's refusals on null edits (noise), the real edit and harmful edits (signal)."""
    from cathrepo.bench.calibrate import VARIANTS, CalibrateConfig, bench_calibrate, summary_table

    policy: dict[str, Any] = {}
    if config_file:
        import tomllib

        policy = dict(tomllib.loads(config_file.read_text()).get("gates", {}))
    policy.update(parse_params(gate_params))
    config = CalibrateConfig(data=data, n=n, skip=skip, variants=variants or VARIANTS, policy=policy,
                             params=parse_params(params), overscale=overscale)
    def write(partial: Any) -> None:
        if json_out:
            json_out.write_text(json.dumps(partial.to_dict(), indent=2) + "\n")

    with progress("Calibrating") as say:
        result = bench_calibrate(config, lambda stage, done, total: say(f"{stage} {done}/{total}"), write)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gate refusals, records {skip}-{skip + n - 1}")
    for column in ("gate", "null edits (false refusals)", "real edit", "harmful edits (catches)"):
        table.add_column(column)
    for row in summary_table(result):
        table.add_row(*row)
    Console().print(table)
    summary = result.summary()
    click.echo(f"harmful edits refused by some gate: {summary['catch_rate']['share']:.0%} of "
               f"{summary['catch_rate']['n']}")
    for variant, entry in summary["variants"].items():
        click.echo(f"  {variant}: refused {entry['refused']['share']:.0%} of {entry['n']}")
    if json_out:
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@bench_group.command("scale")
@click.option("--repo", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Repository to build (created when missing) or extend to N edits.")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Edits the repository holds.")
@click.option("--base", metavar="MODEL", help="Base model of a repository this run creates (default: embedded).")
@click.option("--runs", type=int, default=3, show_default=True, help="Timed runs of each command (medians).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def scale_cmd(repo: Path, n: int, base: str | None, runs: int, json_out: Path | None) -> None:
    """Build a repository of N synthetic edits (each a signed commit with DVC-tracked weights) and time
    log, verify and materialize on it."""
    from cathrepo.bench.scale import ScaleBenchConfig, bench_scale

    with progress("Building") as say:
        out = bench_scale(ScaleBenchConfig(repo=repo, n=n, base=base, runs=runs),
                          lambda stage, done, total: say(f"{stage} {done}/{total}"))
    _table(f"{out['edits']} edits in {out['repo']} (medians of {runs} runs)", out, None)
    if json_out:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@bench_group.command("serve")
@click.option("--repo", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Repository to build (created when missing) with a bench-serve-N tag per --edits.")
@click.option("--edits", "edits", type=click.IntRange(min=0), multiple=True, help="Active edits (default 0 10 1000).")
@click.option("--clients", "clients", type=click.IntRange(min=1), multiple=True, help="Concurrent clients (default 1 4 16).")
@click.option("--requests", type=click.IntRange(min=1), default=4, show_default=True, help="Requests per client.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=16, show_default=True, help="Tokens per request.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Server generation threads.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests the server decodes together (1: one at a time).")
@click.option("--base", metavar="MODEL", help="Base model of a repository this run creates (default: embedded).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def serve_cmd(repo: Path, edits: tuple[int, ...], clients: tuple[int, ...], requests: int, max_tokens: int,
              workers: int, max_batch: int, base: str | None, json_out: Path | None) -> None:
    """Latency and throughput of `cathrepo serve` at each (edits, clients) against plain generate."""
    from rich.console import Console
    from rich.table import Table

    from cathrepo.bench.serve import ServeBenchConfig, bench_serve

    config = ServeBenchConfig(repo=repo, edits=edits or (0, 10, 1000), clients=clients or (1, 4, 16),
                              requests=requests, max_tokens=max_tokens, workers=workers, max_batch=max_batch,
                              base=base)
    with progress("Benchmarking") as say:
        out = bench_serve(config, lambda stage, done, total: say(f"{stage} {done}/{total}"))
    table = Table(title=f"{requests} request(s) per client, {max_tokens} tokens each")
    for column in ("model", "clients", "median s", "p90 s", "requests/s", "tokens/s", "errors"):
        table.add_column(column, justify="right")
    rows = [("generate, threads", r) for r in out["baseline"]["threads"]]
    rows += [("generate, one batch", r) for r in out["baseline"]["batched"]]
    rows += [(f"serve, {r['edits']} edits", r) for r in out["server"]]
    for name, r in rows:
        table.add_row(name, str(r["clients"]), _fmt(r["median_s"]), _fmt(r["p90_s"]), _fmt(r["requests_per_s"]),
                      _fmt(r["tokens_per_s"]), str(r["errors"]))
    Console().print(table)
    click.echo(f"first request per model (verify, build): {out['first_request_s']}; batch sizes: {out['batches']}")
    if json_out:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@bench_group.command("packs")
@click.option("--data", required=True, type=_FILE, help="CounterFact records.")
@click.option("--n", "n", type=int, default=50, show_default=True, help="Records edited one after another.")
@click.option("--skip", type=int, default=5000, show_default=True, help="Skip the first records.")
@click.option("--method", default="rome", show_default=True, help="Edit method.")
@click.option("--batch-size", "edit_batch", type=int, default=1, show_default=True, help="Facts per edit.")
@click.option("--rank", "ranks", type=click.IntRange(min=1), multiple=True, help="svd:R ranks (default 1 4 16 64).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Method parameter, e.g. layer=8.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def packs_cmd(data: Path, n: int, skip: int, method: str, edit_batch: int, ranks: tuple[int, ...],
              params: tuple[str, ...], json_out: Path | None) -> None:
    """Fold N sequential edits into cat and svd:R packs; compare each with cat (held-out KL, logits, ES, PS)."""
    from cathrepo.bench.packs import PackBenchConfig, bench_packs

    config = PackBenchConfig(data=data, n=n, skip=skip, method=method, edit_batch=edit_batch,
                             ranks=ranks or (1, 4, 16, 64), params=parse_params(params))
    with progress("Benchmarking") as say:
        result = bench_packs(config, lambda stage, done, total: say(f"{stage} {done}/{total}"))
    click.echo(f"{result['facts']} facts in {result['edits']} edits ({method}), {result['tokens']} held-out tokens")
    click.echo(f"{'strategy':<10} {'rank':>5} {'bytes':>10} {'rel.err':>8} {'KL mean':>9} {'KL max':>8} "
               f"{'max|dlogit|':>11} {'top1':>6} {'ES':>5} {'PS':>5}")
    for r in result["rows"]:
        click.echo(f"{r['strategy']:<10} {r['rank']:>5} {r['bytes']:>10,} {r['max_error']:>8.3g} {r['kl_mean']:>9.2e} "
                   f"{r['kl_max']:>8.2e} {r['max_logit_diff']:>11.3g} {r['top1_agree']:>6.3f} {r['es']:>5.2f} "
                   f"{r['ps']:>5.2f}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


@bench_group.command("merge")
@click.option("--repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Repository to build (or reuse): main with N synthetic edits, branch feature with one more.")
@click.option("--n", "n", type=click.IntRange(min=2), default=10, show_default=True, help="Edits on main.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per timing (median).")
@click.option("--base", help="Base model of a new repository (default: the embedded model).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def merge_bench_cmd(repo: Path, n: int, runs: int, base: str | None, json_out: Path | None) -> None:
    """Time ci, merge --strategy cat (with consolidate) and a revert inside a pack at N edits."""
    from cathrepo.bench.merges import MergeBenchConfig, bench_merge

    with progress("Benchmarking") as say:
        result = bench_merge(MergeBenchConfig(repo=repo, n=n, runs=runs, base=base),
                             lambda stage, done, total: say(f"{stage} {done}/{total}"))
    for key in ("edits", "ci_first_s", "ci_warm_s", "merge_consolidate_first_s", "merge_consolidate_warm_s",
                "revert_in_pack_first_s", "revert_in_pack_warm_s", "merge_pack_refused"):
        click.echo(f"{key:<26} {result[key]}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


@bench_group.command("forget")
@click.option("--known", required=True, type=_FILE, help="Known facts (known_1000 layout): the protect half is used.")
@click.option("--n", "n", type=int, default=100, show_default=True, help="Facts the model knows, forgotten one by one.")
@click.option("--skip", type=int, default=0, show_default=True, help="Skip the first known facts.")
@click.option("--mode", "modes", type=click.Choice(["negate", "erase", "suppress", "replace"]), multiple=True,
              help="Modes to run (default: all four).")
@click.option("--mmlu", is_flag=True, help="Also run the MMLU gate at the forget stage (slow).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Forget parameter for every mode, e.g. away=0.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def forget_bench_cmd(known: Path, n: int, skip: int, modes: tuple[str, ...], mmlu: bool, params: tuple[str, ...],
                     json_out: Path | None) -> None:
    """Forget N known facts in each mode; report issue 14's measures per mode."""
    from cathrepo.bench.forget import MODES, ForgetBenchConfig, bench_forget

    config = ForgetBenchConfig(known=known, n=n, skip=skip, modes=modes or MODES, mmlu=mmlu,
                               params=tuple(parse_params(params).items()))
    def keep(so_far: dict[str, Any]) -> None:  # each fact's row as it is measured: a cut run keeps them
        if json_out:
            json_out.write_text(json.dumps(so_far, indent=2) + "\n")

    with progress("Benchmarking") as say:
        result = bench_forget(config, lambda stage, done, total: say(f"{stage} {done}/{total}"), keep)
    for mode, row in result["modes"].items():
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "rows"}
        click.echo(f"{mode}: {shown}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


def _table(title: str, values: dict[str, Any], beside: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if beside is not None:
        table.add_column("unedited", justify="right")
    for key, value in values.items():
        if isinstance(value, (dict, list)) or key in ("n", "method", "model", "sequential"):
            continue
        row = [key, _fmt(value)] + ([_fmt(beside.get(key))] if beside is not None else [])
        table.add_row(*row)
    Console().print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
