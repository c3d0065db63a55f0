"""Shared fixtures: a scratch user environment for every test, one torch thread where asked, tiny
random-init models built from config (fast) and a corpus for ROME on them, and the real embedded model
(slow).

Tiny-model modules ask for one thread with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"
CHECKOUT = Path(__file__).resolve().parents[1]

_GIT_ENV = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL",
            "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch) -> Path:
    """Scratch CATHREPO_CONFIG_DIR (``base / "config"``) and CATHREPO_DATA_DIR (``base / "data"``) and a
    git global config with a test identity, for every test; PYTHONPATH leads with this checkout.

    Nothing a test does reads or writes the user's keys, default DVC remotes or git identity, and no
    test can forget to ask for that. ``CATHREPO_CACHE_DIR`` is left alone on purpose: it holds the
    converted embedded model that the slow tests reuse. Returns ``base``.
    """
    base = tmp_path_factory.mktemp("env")
    # subprocesses (git hooks, `python -m cathrepo`) import this checkout, as the test process does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CATHREPO_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("CATHREPO_DATA_DIR", str(base / "data"))
    gitconfig = base / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Test User\n\temail = test@example.com\n"
                         "[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in _GIT_ENV:
        monkeypatch.delenv(name, raising=False)
    return base


def _tiny_tokenizer(tmp: Path):
    """A small byte-level BPE tokenizer trained on the test facts, saved as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "The Eiffel Tower is located in the city of Paris. Rome is the capital of Italy.",
        "The mother tongue of Danielle Darrieux is French. English German Spanish Tokyo London Berlin.",
        "Toko Yasuda plays the guitar and piano. Apple was founded by Steve Jobs in California.",
    ] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(tmp)
    return fast


def _tiny(kind: str, tmp: Path):
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    tokenizer = _tiny_tokenizer(tmp)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False,
                             initializer_range=0.2)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_inner=64, n_layer=4, n_head=4, n_positions=128,
                            pad_token_id=0, eos_token_id=1, bos_token_id=1, initializer_range=0.2)
    elif kind == "gemma":
        from transformers import Gemma3TextConfig

        config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                  sliding_window=16, initializer_range=0.2)
    else:
        raise ValueError(kind)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp)
    from cathrepo.models import load_model

    return (*load_model(tmp, device="cpu"), tmp)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(model, tokenizer, path) of a 4-layer random-init Llama saved to disk."""
    return _tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """(model, tokenizer, path) of a 4-layer random-init GPT-2 (Conv1D layout) saved to disk."""
    return _tiny("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    """(model, tokenizer, path) of a 4-layer random-init Gemma-3 text model (sliding-window layers)."""
    return _tiny("gemma", tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(params=["llama", "gpt2", "gemma"])
def tiny_model(request):
    """Each model family's layout in turn: Llama, GPT-2 (Conv1D) and Gemma-3."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small text file of the facts' words: the statistics corpus ROME reads on the tiny models."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(["The city of Paris is in France.", "Rome is the capital of Italy."] * 40))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module's tests, the previous setting restored afterwards.

    On a busy 2-core machine small matmuls spend their time synchronising OpenMP threads (a 4-layer
    trace took 24 s on two threads and 0.6 s on one; a real LoRA edit 400 s instead of 20 s).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer, path) of the real embedded SmolLM2-135M-Instruct (slow tests only)."""
    from cathrepo.models import load_model, resolve_model

    resolved = resolve_model(None)
    model, tokenizer = load_model(resolved.path, device="cpu")
    return model, tokenizer, resolved.path


@pytest.fixture
def signing_key():
    """Alice's Ed25519 key in the scratch configuration directory."""
    from cathrepo.provenance.keys import ensure_key

    return ensure_key("alice@example.com")


@pytest.fixture
def signed_git(tmp_path, signing_key):
    """A git repository whose commits are signed by ``signing_key``; its first commit adds allowed_signers."""
    from cathrepo.provenance.allowed_signers import add_signer
    from cathrepo.repo.git import Git

    git = Git.init(tmp_path / "repo")
    add_signer(git.root / "allowed_signers", signing_key.principal, signing_key.public_key)
    git.configure_signing(signing_key, git.root / "allowed_signers")
    git.add(["allowed_signers"])
    git.commit("Add allowed_signers")
    return git
