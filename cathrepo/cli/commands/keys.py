"""cathrepo keys list [--json] | keys add PRINCIPAL PUBKEY | keys revoke KEY [--at TIME] [-m REASON]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.group("keys")
def keys_group() -> None:
    """List, add and revoke the keys that may sign and approve (allowed_signers)."""


@keys_group.command("list")
@click.option("--rev", default="HEAD", help="Read allowed_signers at this revision.")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, rev: str, as_json: bool) -> None:
    """Every key of allowed_signers: principals, fingerprint, and when it was revoked."""
    keys = open_repo(ctx).keys(rev)
    if as_json:
        echo_json([k.to_dict() for k in keys])
        return
    for k in keys:
        state = f"revoked {k.revoked}" if k.revoked else "valid"
        click.echo(f"{k.fingerprint}  {','.join(k.principals):<30} {state}" + (f"  ({k.comment})" if k.comment else ""))


@keys_group.command("add")
@click.argument("principal")
@click.argument("public_key")
@click.pass_context
def add_cmd(ctx: click.Context, principal: str, public_key: str) -> None:
    """Let PUBLIC_KEY (a .pub file or an 'ssh-ed25519 AAAA...' line) sign and approve as PRINCIPAL."""
    done = open_repo(ctx).add_key(principal, public_key)
    click.echo(f"[{done.commit[:12]}] added {done.key.fingerprint} for {principal}")


@keys_group.command("revoke")
@click.argument("key")
@click.option("--at", "at", metavar="TIME", help="Revoked as of TIME (YYYYMMDDHHMMSSZ, UTC; e.g. when it leaked); "
              "default: now.")
@click.option("-m", "--reason", default="", help="Why (the commit message body).")
@click.pass_context
def revoke_cmd(ctx: click.Context, key: str, at: str | None, reason: str) -> None:
    """Revoke KEY (a fingerprint, or a principal with one key): its later signatures fail, earlier ones hold."""
    done = open_repo(ctx).revoke_key(key, at=at, reason=reason)
    click.echo(f"[{done.commit[:12]}] revoked {done.key.fingerprint} ({','.join(done.key.principals)}) "
               f"as of {done.key.revoked}")
