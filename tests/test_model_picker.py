"""Model loading by hub id from a local HuggingFace cache, load progress, and the sidebar picker.

The hub tests build a real cache layout (``models--org--name`` with blobs, a snapshot of
links into them and ``refs/main``) from a tiny checkpoint in a temporary ``HF_HOME``.
Every test here runs with ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` on a closed loopback
port, so none can reach the network, even where a test unsets the offline flag.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from checkpoints import make_checkpoint
from conftest_dashboard import APP_PATH, REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard.state import OTHER_MODEL  # noqa: E402
from lvs_core.errors import AuditInputError  # noqa: E402
from lvs_core.live import flip_prompt  # noqa: E402
from lvs_core.models import load_model  # noqa: E402

HUB_ID = "lvs-tests/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"
RUN_TIMEOUT = 90
LIVE_FLIP = "views/live_flip.py"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Point HuggingFace at an empty cache and a closed loopback endpoint, offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hub-source"), "llama", seed=3)


def write_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder``'s files out as the hub cache does and return the snapshot folder.

    Each file goes to ``blobs/<sha256>``; the snapshot contains relative links to the blobs,
    and ``refs/main`` names the snapshot's commit.
    """
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_hub_id_loads_from_cache_offline(tmp_path, tiny_folder):
    snapshot = write_hub_cache(tmp_path / "hf-home", HUB_ID, tiny_folder)

    model = load_model(HUB_ID, device="cpu")

    assert model.spec == HUB_ID
    assert model.source_path == str(snapshot)
    assert model.n_layers == 3
    # The same weights as the folder it was cached from: the same generations and margins.
    reference = load_model(str(tiny_folder), device="cpu")
    expected = flip_prompt(reference, "Tell me a story about a cat", 1, 0.3, max_new_tokens=4)
    result = flip_prompt(model, "Tell me a story about a cat", 1, 0.3, max_new_tokens=4)
    for key in ("clean", "pgd", "random"):
        assert result[key]["text"] == expected[key]["text"], key
        assert result[key]["margin"] == pytest.approx(expected[key]["margin"], abs=1e-5), key


def test_cached_hub_id_loads_with_hub_unreachable(monkeypatch, tmp_path, tiny_folder):
    # Not offline, but the endpoint refuses connections: the cache serves the model.
    write_hub_cache(tmp_path / "hf-home", HUB_ID, tiny_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    model = load_model(HUB_ID, device="cpu")

    assert model.n_params == load_model(str(tiny_folder), device="cpu").n_params


def test_uncached_hub_id_offline_message(tmp_path):
    with pytest.raises(AuditInputError) as caught:
        load_model("lvs-tests/not-cached", device="cpu")

    message = str(caught.value)
    assert "'lvs-tests/not-cached' is not in the local HuggingFace cache" in message
    assert str(tmp_path / "hf-home" / "hub") in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "`hf download lvs-tests/not-cached`" in message
    assert "\n" not in message


def test_uncached_hub_id_unreachable_message(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    endpoint = os.environ["HF_ENDPOINT"]

    with pytest.raises(AuditInputError) as caught:
        load_model("lvs-tests/not-cached", device="cpu")

    message = str(caught.value)
    assert "is not in the local HuggingFace cache" in message
    assert f"no connection to {endpoint}" in message


def test_incomplete_cached_snapshot_message(tmp_path, tiny_folder):
    snapshot = write_hub_cache(tmp_path / "hf-home", HUB_ID, tiny_folder)
    (snapshot / "model.safetensors").unlink()

    with pytest.raises(AuditInputError, match=r"is incomplete \(no weights"):
        load_model(HUB_ID, device="cpu")


def test_load_progress_stages(tiny_folder):
    stages: list[tuple[str, float]] = []

    load_model(str(tiny_folder), device="cpu", progress=lambda stage, fraction: stages.append((stage, fraction)))

    names = [stage for stage, _ in stages]
    fractions = [fraction for _, fraction in stages]
    assert names[0] == "resolving the model"
    assert names[1] == "reading config.json"
    assert names[2] == "loading weights and tokenizer (LlamaForCausalLM)"
    assert names[-1] == "ready"
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0


# The sidebar picker, in AppTest


def sidebar_captions(app: AppTest) -> list[str]:
    return [element.value for element in app.sidebar.caption]


def test_picker_loads_hub_id_from_cache(app_env, tmp_path, tiny_folder):
    write_hub_cache(tmp_path / "hf-home", HUB_ID, tiny_folder)
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    app.switch_page(LIVE_FLIP).run()

    app.sidebar.selectbox[0].set_value(OTHER_MODEL).run()
    app.sidebar.text_input[0].input(HUB_ID).run()

    assert not app.exception, [element.value for element in app.exception]
    assert not app.error, [element.value for element in app.error]
    card = next(caption for caption in sidebar_captions(app) if HUB_ID in caption)
    assert "3 blocks (+ embedding) · d_model 32" in card
    assert "cpu · float32" in card
    assert f"from the local HuggingFace cache, revision {REVISION[:8]}" in card


def test_picker_uncached_hub_id_error(app_env):
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    app.switch_page(LIVE_FLIP).run()

    app.sidebar.selectbox[0].set_value(OTHER_MODEL).run()
    app.sidebar.text_input[0].input("lvs-tests/not-cached").run()

    assert not app.exception, [element.value for element in app.exception]
    assert len(app.error) == 1
    assert "is not in the local HuggingFace cache" in app.error[0].value


def test_card_stays_on_other_pages(app_env):
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    app.switch_page(LIVE_FLIP).run()
    spec = str(app_env.checkpoints["safe"])
    assert any(spec in caption for caption in sidebar_captions(app))

    app.switch_page("views/heatmaps.py").run()

    card = next(caption for caption in sidebar_captions(app) if spec in caption)
    assert "parameters · cpu · float32" in card


def test_card_shows_nudge_layer(app_env):
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    app.switch_page(LIVE_FLIP).run()

    app.sidebar.selectbox[0].set_value(str(app_env.checkpoints["dissociated"])).run()

    card = next(caption for caption in sidebar_captions(app) if "dissociated" in caption)
    assert "trained nudge at block 2" in card
