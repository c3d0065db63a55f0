"""cathrepo serve [--ref production] [--host 127.0.0.1] [--port N] [--token T] [bounds]"""

from __future__ import annotations

import logging

import click

from cathrepo.cli.shared import open_repo, progress


@click.command("serve")
@click.option("--ref", help="Default model: an environment, branch, tag or commit ([serve] ref: production).")
@click.option("--host", help="Address to listen on ([serve] host: 127.0.0.1); others need a token.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port ([serve] port: 8000; 0 picks a free one).")
@click.option("--token", help="Bearer token every request must carry (default: $CATHREPO_SERVE_TOKEN).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), help="Largest request body ([serve]: 65536).")
@click.option("--max-prompt-tokens", type=click.IntRange(min=1), help="Longest prompt ([serve]: 2048).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens one request generates ([serve]: 512).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds per request, waiting included ([serve]: 60).")
@click.option("--cache-models", type=click.IntRange(min=1), help="Materialized models kept ([serve]: 2).")
@click.option("--workers", type=click.IntRange(min=1), help="Generation threads ([serve]: 2).")
@click.option("--max-batch", type=click.IntRange(min=1), help="Requests to one model decoded together ([serve]: 16).")
@click.pass_context
def serve_cmd(ctx: click.Context, token: str | None, **options: object) -> None:
    """Serve the edited model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions,
    /v1/models); the request's "model" picks a ref, a tenant or TENANT@REF."""
    from cathrepo.serve.listen import serve_forever
    from cathrepo.serve.server import Server, ServeSettings

    repo = open_repo(ctx)
    settings = ServeSettings.of(repo.config.serve, token, **options)
    with progress("Loading the base model"):
        server = Server(repo, settings)
    serve_log = logging.getLogger("cathrepo.serve")
    if serve_log.getEffectiveLevel() > logging.INFO:  # requests are logged unless -q style config says no
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        serve_log.addHandler(handler)
        serve_log.setLevel(logging.INFO)
        serve_log.propagate = False

    def ready(url: str) -> None:
        click.echo(f"Serving {repo.root} on {url} (default model: {settings.config.ref}; "
                   f"token {'required' if settings.token else 'not required'}). Ctrl-C stops.", err=True)

    serve_forever(server, ready)
