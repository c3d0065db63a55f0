"""Registries import a built-in entry's module when that name is looked up, not every built-in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cathrepo.exceptions import UnknownNameError


def test_looking_up_rome_imports_rome_only():
    code = ("import sys; from cathrepo.edits.base import get_method; from cathrepo.gates.base import GATES; "
            "get_method('rome'); GATES.get('efficacy'); "
            "loaded = [m for m in ('cathrepo.edits.lora', 'cathrepo.edits.auto', 'cathrepo.gates.mmlu') "
            "if m in sys.modules]; print(*loaded); sys.exit(1 if loaded else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"imported without being asked for: {proc.stdout}{proc.stderr}"


def test_an_unknown_name_still_lists_every_entry():
    from cathrepo.edits.base import EDIT_METHODS, get_method

    with pytest.raises(UnknownNameError) as info:
        get_method("rom")
    assert info.value.hint == "Did you mean: rome?"
    assert {"rome", "lora", "auto"} <= set(EDIT_METHODS.names())
