"""Shared pytest fixtures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

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


class FakeHub:
    """The Hub as `supersam_hf.hub` sees it: huggingface_hub's `create_repo` and `upload_folder`, answered locally.

    Repos live in `repos` (repo id -> `private`, `files` {path: bytes}) and every call is in `calls`. Each commit is
    also laid out in the HF cache as a download leaves it (hub/models--org--name/snapshots/<commit>/ + refs/main),
    so `from_pretrained(repo_id)`, `ModelCard.load` and `snapshot_download` read the pushed files with
    HF_HUB_OFFLINE=1. A missing or wrong token is the Hub's 401 and an unknown repo its 404, raised by
    huggingface_hub's own `hf_raise_for_status`; files are chosen by its `filter_repo_objects`, as `upload_folder` does.
    """

    user = "user"  # the token's namespace, for a repo id without one

    def __init__(self, cache: Path, token: str) -> None:
        from huggingface_hub import constants

        self.cache, self.token, self.endpoint = cache, token, constants.ENDPOINT
        self.repos: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict]] = []

    def files(self, repo_id: str) -> dict[str, bytes]:
        return self.repos[repo_id]["files"]

    def _fail(self, status: int, url: str, message: str, code: str | None = None) -> None:
        from huggingface_hub.utils import hf_raise_for_status

        try:
            import httpx2 as http  # huggingface_hub 2.x
        except ImportError:
            import httpx as http  # huggingface_hub 1.x
        hf_raise_for_status(http.Response(status, request=http.Request("POST", url), json={"error": message},
                                          headers={"X-Error-Code": code} if code else {}))

    def create_repo(self, repo_id: str, *, token=None, private=None, exist_ok: bool = False, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok, **kwargs}))
        if token != self.token:
            self._fail(401, f"{self.endpoint}/api/repos/create", "Invalid credentials in Authorization header")
        repo_id = repo_id if "/" in repo_id else f"{self.user}/{repo_id}"
        if repo_id.split("/")[0] != self.user:
            self._fail(403, f"{self.endpoint}/api/repos/create", "You don't have the rights to create a model under "
                       f"the namespace \"{repo_id.split('/')[0]}\"")
        if repo_id in self.repos and not exist_ok:
            self._fail(409, f"{self.endpoint}/api/repos/create", "You already created this model repo")
        self.repos.setdefault(repo_id, {"private": bool(private), "files": {}})
        return RepoUrl(f"{self.endpoint}/{repo_id}", endpoint=self.endpoint)

    def upload_folder(self, *, repo_id: str, folder_path, token=None, commit_message=None, ignore_patterns=None,
                      **kwargs):
        from huggingface_hub import CommitInfo
        from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

        self.calls.append(("upload_folder", repo_id, {"commit_message": commit_message, **kwargs}))
        url = f"{self.endpoint}/api/models/{repo_id}/commit/main"
        if token != self.token:
            self._fail(401, url, "Invalid credentials in Authorization header")
        if repo_id not in self.repos:
            self._fail(404, url, "Repository not found", code="RepoNotFound")
        folder = Path(folder_path)
        paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        files = self.files(repo_id)
        for path in filter_repo_objects(paths, ignore_patterns=[*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]):
            files[path] = (folder / path).read_bytes()
        oid = hashlib.sha1(b"".join(path.encode() + hashlib.sha1(files[path]).digest() for path in sorted(files)))
        snapshot = self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / oid.hexdigest()
        for path, content in files.items():
            (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / path).write_bytes(content)
        (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
        (snapshot.parents[1] / "refs" / "main").write_text(snapshot.name)
        return CommitInfo(commit_url=f"{self.endpoint}/{repo_id}/commit/{snapshot.name}", commit_message=commit_message,
                          commit_description="", oid=snapshot.name)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A `FakeHub` behind `huggingface_hub.create_repo` / `upload_folder` for this test, its cache under `tmp_path`
    (`HF_HOME`, `HF_HUB_CACHE`, no stored login) and `HF_HUB_OFFLINE=1` (the environment and huggingface_hub's
    import-time copies), so nothing reaches the network. Pass `token=local_hub.token` ("test-token")."""
    import huggingface_hub
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    hub = FakeHub(home / "hub", LOCAL_HUB_TOKEN)
    paths = {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_TOKEN_PATH": home / "token",
             "HF_STORED_TOKENS_PATH": home / "stored_tokens"}
    for name, value in {**paths, "HF_HUB_OFFLINE": True}.items():
        monkeypatch.setattr(constants, name, value if isinstance(value, bool) else str(value))
        monkeypatch.setenv(name, "1" if isinstance(value, bool) else str(value))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub, "create_repo", hub.create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", hub.upload_folder)
    return hub
