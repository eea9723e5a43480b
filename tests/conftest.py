"""Shared fixtures: tiny random checkpoints built once per test session."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_support import app_url, browser, page, served_app  # noqa: E402, F401  (fixtures)
from checkpoints import ARCHITECTURES, make_checkpoint  # noqa: E402
from conftest_dashboard import dashboard_inputs, one_torch_thread  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)

# The test models are tiny: one thread avoids thread spin-up costs that dominate their
# forward passes, most of all on a 2-core machine with another process running.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def llama_folder(checkpoint_root) -> Path:
    return make_checkpoint(checkpoint_root, "llama")


@pytest.fixture(scope="session")
def llama_model(llama_folder):
    from lvs_core.models import load_model

    return load_model(str(llama_folder), device="cpu")


@pytest.fixture(scope="session", params=ARCHITECTURES)
def arch_model(request, checkpoint_root):
    """Each architecture once; GPT-2 has no chat template of its own, so it gets one explicitly."""
    from checkpoints import CHAT_TEMPLATE

    from lvs_core.models import load_model

    arch = request.param
    has_template = arch != "gpt2"
    folder = make_checkpoint(checkpoint_root, arch, chat_template=CHAT_TEMPLATE if has_template else None)
    return load_model(str(folder), device="cpu", chat_template=None if has_template else CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """The dashboard tests' two tiny checkpoints, prompt file and sweep run (see ``conftest_dashboard``)."""
    with one_torch_thread():
        yield dashboard_inputs(tmp_path_factory)


@pytest.fixture
def app_env(inputs, monkeypatch):
    """Point the app at the dashboard test inputs through its environment variables."""
    for name, value in inputs.environment().items():
        monkeypatch.setenv(name, value)
    return inputs
