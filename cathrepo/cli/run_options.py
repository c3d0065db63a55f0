"""The options that decide a benchmark run's edits, declared once for ``bench edits`` and ``bench stack``.

``bench edits`` starts a run from them; ``bench stack`` reads a saved run back and must be given the same
ones (they key the saved state), so its helps say "the saved run's". One list keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cathrepo.cli.fact_options import apply_options

F = TypeVar("F", bound=Callable[..., Any])
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

#: option -> (its declaration, its help where a run is started).
_RUN: dict[str, tuple[tuple[str, ...], dict[str, Any], str]] = {
    "--data": (("--data",), {"required": True, "type": FILE}, "CounterFact (flat or ROME layout) or zsRE records."),
    "--n": (("--n", "n"), {"type": int}, "Records to edit."),
    "--method": (("--method",), {"default": "rome", "show_default": True},
                 "Edit method, or 'none' for the unedited model."),
    "--batch-size": (("--batch-size", "edit_batch"), {"type": int, "default": 1, "show_default": True},
                     "Facts per edit: each batch is one call of the method (MEMIT writes a batch jointly)."),
    "--model": (("--model",), {}, "Model directory or hub id (default: the embedded model)."),
    "--param": (("--param", "params"), {"multiple": True, "metavar": "KEY=VALUE"}, "Method parameter, e.g. layer=8."),
    "--corpus": (("--corpus",), {"type": FILE}, "Text for the method's statistics (default: the method's own)."),
    "--skip": (("--skip",), {"type": int, "default": 0, "show_default": True}, "Skip the first records."),
}


def run_options(*, saved: bool = False) -> Callable[[F], F]:
    """The options that decide a run's edits (and key its saved state, :func:`cathrepo.bench.resume.setup_key`):
    ``--data --n --method --batch-size --model --param --corpus --skip``.

    Args:
        saved: the command reads a saved run back (``bench stack``): ``--n`` is required and every help
            says to give the saved run's; otherwise ``--n`` defaults to 100.
    """
    options = []
    for name, (decls, kwargs, says) in _RUN.items():
        extra = {"required": True} if saved and name == "--n" else {"default": 100, "show_default": True} \
            if name == "--n" else {}
        options.append(click.option(*decls, **kwargs, **extra,
                                    help=f"The saved run's {name}." if saved else says))
    return lambda f: apply_options(options, f)
