"""Fixtures shared by the test modules (helpers that make data live in tests/fakes.py)."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def load_script():
    """`load_script("train_fusion").main([...])`: a script of scripts/ imported as a module."""
    def load(name):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # a script's dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    return load
