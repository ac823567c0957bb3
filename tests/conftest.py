"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from hub_server import LoopbackHub

LOCAL_HUB_TOKEN = "test-token"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are op-overhead bound; on a shared 2-core machine intra-op threads only spin (10-20x slower).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A fresh in-memory Hugging Face Hub on 127.0.0.1 for this test (see `tests/hub_server.py`).

    While the test runs, `huggingface_hub` and `transformers` talk to it: `HF_ENDPOINT` points at it (env var and the
    import-time copies: `huggingface_hub.constants.ENDPOINT`, `HUGGINGFACE_CO_URL_TEMPLATE`, the module-level
    `HfApi` behind `huggingface_hub.create_repo`/`upload_folder`/..., transformers' shared `HfApi`), `HF_HOME` /
    `HF_HUB_CACHE` / the token file live under `tmp_path`, offline mode is off, and Xet is disabled
    (`HF_HUB_DISABLE_XET=1`: the loopback hub speaks the classic LFS protocol). No token is configured: pass
    `token=local_hub.token` ("test-token"); requests without a token can read public repos but not write.

    Yields the running `LoopbackHub` (`.endpoint`, `.token`, `.requests`, `.files(repo_id)`, `.lfs_files(repo_id)`).
    """
    import huggingface_hub
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants

    hub = LoopbackHub(tokens=(LOCAL_HUB_TOKEN,)).start()
    hub.token = LOCAL_HUB_TOKEN
    endpoint = hub.endpoint
    home = tmp_path / "hf_home"
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HUGGINGFACE_HUB_CACHE": home / "hub",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
    }
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_UPDATE_CHECK": "1", **{k: str(v) for k, v in paths.items() if k != "HF_STORED_TOKENS_PATH"}}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    # huggingface_hub reads its environment once, at import: patch the copies it took.
    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        **{k: str(v) for k, v in paths.items()},
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)  # behind huggingface_hub.create_repo etc.
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # transformers' lazily created shared HfApi
    try:
        yield hub
    finally:
        huggingface_hub.close_session()  # drop pooled keep-alive connections to this server
        hub.stop()
