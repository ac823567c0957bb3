"""A loopback Hugging Face Hub for tests: the part of the Hub HTTP API that `huggingface_hub` and `transformers` use.

Covers `create_repo` / `delete_repo` / `whoami` / card metadata validation, `upload_folder` / `create_commit`
(preupload, NDJSON commit with inline base64 files, and the git-LFS batch API with "basic" PUT uploads for LFS
files, `create_pr`), `repo_info` / `model_info`,
`list_repo_tree` / `get_paths_info`, and `hf_hub_download` (HEAD/GET `/resolve/`, with the headers the client
relies on). Errors carry the `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) that
`huggingface_hub.utils.hf_raise_for_status` turns into the matching exception.

Stdlib only (`http.server.ThreadingHTTPServer` on 127.0.0.1, a free port); repos and LFS objects live in memory.
Not supported: Xet storage (clients must run with `HF_HUB_DISABLE_XET=1`; the `local_hub` fixture sets it),
multipart LFS uploads, gated repos, discussions, pagination (listings come back in one page).
"""

from __future__ import annotations

import base64
import datetime as _dt
import fnmatch
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# What the Hub writes in a new repo: these patterns go through LFS (checked by `preupload`).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
        "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
        "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub sends files above 10 MB through LFS whatever their name
REPO_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_oid(self) -> str:
        """Blob id in the git tree (for LFS files: the id of the pointer file)."""
        return git_blob_sha1(lfs_pointer(self.sha256, len(self.content)) if self.lfs else self.content)

    @property
    def etag(self) -> str:
        """The ETag the Hub sends on `/resolve/`: the sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else git_blob_sha1(self.content)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.git_oid, "size": len(self.content), "path": path}
        if self.lfs:
            pointer_size = len(lfs_pointer(self.sha256, len(self.content)))
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": pointer_size}
        return entry


@dataclass
class Commit:
    oid: str
    title: str
    description: str
    files: dict[str, Blob]
    parent: str | None
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or "refs/pr/N" -> commit oid
    num_prs: int = 0

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return self.commits.get(revision)
        return None


class HubError(Exception):
    """An error response: status, message, and the `X-Error-Code` huggingface_hub dispatches on."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_SEG = r"([^/]+)"
_API_REPO = rf"^/api/(models|datasets|spaces)/{_SEG}/{_SEG}"
_WEB_REPO = rf"^/(?:(datasets|spaces)/)?{_SEG}/{_SEG}"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("GET", r"^/api/whoami-v2$", "whoami"),
        ("POST", r"^/api/validate-yaml$", "validate_yaml"),
        ("POST", r"^/api/repos/create$", "create_repo"),
        ("DELETE", r"^/api/repos/delete$", "delete_repo"),
        ("POST", _API_REPO + rf"/preupload/{_SEG}$", "preupload"),
        ("POST", _API_REPO + rf"/commit/{_SEG}$", "commit"),
        ("GET", _API_REPO + rf"/tree/{_SEG}(?:/(.*))?$", "tree"),
        ("POST", _API_REPO + rf"/paths-info/{_SEG}$", "paths_info"),
        ("GET", _API_REPO + rf"(?:/revision/{_SEG})?$", "repo_info"),
        ("POST", _WEB_REPO + r"\.git/info/lfs/objects/batch$", "lfs_batch"),
        ("PUT", r"^/__lfs__/upload/([0-9a-f]{64})$", "lfs_upload"),
        ("POST", r"^/__lfs__/verify/([0-9a-f]{64})$", "lfs_verify"),
        ("GET", _WEB_REPO + rf"/resolve/{_SEG}/(.+)$", "resolve"),
        ("HEAD", _WEB_REPO + rf"/resolve/{_SEG}/(.+)$", "resolve"),
        ("GET", _WEB_REPO + r"/commit/([0-9a-f]{40})$", "commit_page"),
    ]
]


class LoopbackHub:
    """In-memory Hub served on 127.0.0.1 (free port) by a daemon thread; `with LoopbackHub() as hub: ...`.

    Args:
        tokens: accepted access tokens (`Authorization: Bearer <token>`); writes need one, a wrong one is a 401.
        user: the account the tokens belong to (namespace of repos created without one).
    """

    def __init__(self, tokens=("test-token",), user: str = "user"):
        self.tokens = set(tokens)
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions and debugging
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("LoopbackHub is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackHub":
        handler = type("BoundHubHandler", (_HubHandler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection helpers for tests
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Content of every file of a repo at a revision."""
        with self._lock:
            commit = self._repo(repo_type, repo_id, token=next(iter(self.tokens), None)).resolve(revision)
            return {path: blob.content for path, blob in commit.files.items()}

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """Paths of a repo stored through LFS."""
        with self._lock:
            commit = self._repo(repo_type, repo_id, token=next(iter(self.tokens), None)).resolve(revision)
            return {path for path, blob in commit.files.items() if blob.lfs}

    # ------------------------------------------------------------------ state helpers
    def _repo(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and token not in self.tokens):
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, ref: str, files: dict[str, Blob], title: str, description: str = "") -> Commit:
        parent = repo.refs.get(ref)
        material = json.dumps([repo.repo_id, parent, title, next(self._counter), sorted(files)]).encode()
        commit = Commit(hashlib.sha1(material).hexdigest(), title, description, files, parent, _now())
        repo.commits[commit.oid] = commit
        repo.refs[ref] = commit.oid
        return commit

    def _web_url(self, repo: Repo, *parts: str) -> str:
        return "/".join([f"{self.endpoint}/{REPO_PREFIXES[repo.repo_type]}{repo.repo_id}", *parts])

    @staticmethod
    def _lfs_patterns(files: dict[str, Blob]) -> list[str]:
        attributes = files.get(".gitattributes")
        text = attributes.content.decode(errors="replace") if attributes else ""
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line and line.split()]

    @classmethod
    def _is_lfs(cls, path: str, size: int, patterns: list[str]) -> bool:
        if size >= LFS_SIZE_THRESHOLD:
            return True
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(path if "/" in p else name, p) for p in patterns)

    # ------------------------------------------------------------------ endpoints
    def whoami(self, req: "_HubHandler") -> dict:
        req.require_token()
        return {
            "type": "user",
            "id": "0" * 24,
            "name": self.user,
            "fullname": self.user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
        }

    def validate_yaml(self, req: "_HubHandler") -> dict:
        """Model/dataset card metadata check (`RepoCard.validate`, run before committing a README.md)."""
        content = req.json_body().get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
        if match:
            import yaml

            try:
                metadata = yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                raise HubError(400, f"Invalid YAML in the card metadata: {error}") from None
            if metadata is not None and not isinstance(metadata, dict):
                raise HubError(400, "The card metadata must be a YAML mapping")
        return {"errors": [], "warnings": []}

    def create_repo(self, req: "_HubHandler") -> tuple[int, dict]:
        req.require_token()
        body = req.json_body()
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        name = body.get("name")
        if not name or "/" in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{body.get('organization') or self.user}/{name}"
        private = body.get("private") or body.get("visibility") == "private"
        with self._lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                repo = self.repos[key]
                return 409, {"error": "You already created this repo", "url": self._web_url(repo)}
            repo = Repo(repo_type, repo_id, bool(private), _now())
            self._new_commit(repo, "main", {".gitattributes": Blob(DEFAULT_GITATTRIBUTES.encode(), False)},
                             "initial commit")
            self.repos[key] = repo
            repo_hash = hashlib.sha1(repo_id.encode()).hexdigest()[:24]
            return 200, {"url": self._web_url(repo), "name": repo_id, "id": repo_hash}

    def delete_repo(self, req: "_HubHandler") -> dict:
        token = req.require_token()
        body = req.json_body()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.user}/{body.get('name')}"
        with self._lock:
            self._repo(repo_type, repo_id, token)
            del self.repos[(repo_type, repo_id)]
        return {}

    def repo_info(self, req: "_HubHandler", api_type, ns, name, revision=None) -> dict:
        repo_type, repo_id = API_TYPES[api_type], f"{ns}/{name}"
        with self._lock:
            repo = self._repo(repo_type, repo_id, req.token)
            commit = self._commit_at(repo, revision or "main")
            info = {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": ns,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }
            if repo_type == "model":
                info["modelId"] = repo_id
            if req.query.get("blobs", ["false"])[0].lower() in ("1", "true"):
                for sibling in info["siblings"]:
                    blob = commit.files[sibling["rfilename"]]
                    sibling.update(size=len(blob.content), blobId=blob.git_oid)
                    if blob.lfs:
                        sibling["lfs"] = blob.tree_entry(sibling["rfilename"])["lfs"]
            return info

    def _tree_entries(self, commit: Commit, path: str, recursive: bool) -> list[dict]:
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and prefix.rstrip("/") in commit.files:
            raise HubError(400, f"{path} is a file, not a folder")
        entries: dict[str, dict] = {}
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # folders on the way
                folder = prefix + "/".join(rest[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(folder, self._folder_entry(commit, folder))
                if not recursive:
                    break
            if len(rest) == 1 or recursive:
                entries[file_path] = commit.files[file_path].tree_entry(file_path)
        if prefix and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return list(entries.values())

    @staticmethod
    def _folder_entry(commit: Commit, folder: str) -> dict:
        listing = "".join(f"{p}:{b.git_oid}" for p, b in sorted(commit.files.items()) if p.startswith(folder + "/"))
        return {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": folder}

    def tree(self, req: "_HubHandler", api_type, ns, name, revision, path=None) -> list[dict]:
        recursive = req.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self._lock:
            repo = self._repo(API_TYPES[api_type], f"{ns}/{name}", req.token)
            return self._tree_entries(self._commit_at(repo, revision), path or "", recursive)

    def paths_info(self, req: "_HubHandler", api_type, ns, name, revision) -> list[dict]:
        form = parse_qs(req.body.decode(), keep_blank_values=True)
        with self._lock:
            repo = self._repo(API_TYPES[api_type], f"{ns}/{name}", req.token)
            commit = self._commit_at(repo, revision)
            out = []
            for path in form.get("paths", []):
                path = path.strip("/")
                if path in commit.files:
                    out.append(commit.files[path].tree_entry(path))
                elif any(p.startswith(path + "/") for p in commit.files):
                    out.append(self._folder_entry(commit, path))
            return out

    def preupload(self, req: "_HubHandler", api_type, ns, name, revision) -> dict:
        token = req.require_token()
        body = req.json_body()
        with self._lock:
            repo = self._repo(API_TYPES[api_type], f"{ns}/{name}", token)
            commit = repo.resolve(revision) or self._commit_at(repo, "main")  # a new branch/PR starts from main
            patterns = self._lfs_patterns(commit.files)
            files = []
            for item in body.get("files", []):
                path, size = item["path"], int(item["size"])
                lfs = self._is_lfs(path, size, patterns)
                existing = commit.files.get(path)
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else git_blob_sha1(existing.content)
                mode = "lfs" if lfs else "regular"
                files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return {"files": files, "commitOid": commit.oid}

    def lfs_batch(self, req: "_HubHandler", prefix, ns, name) -> tuple[int, dict]:
        body = req.json_body()
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(prefix or "", "model")
        operation = body.get("operation")
        token = req.require_token() if operation == "upload" else req.token
        with self._lock:
            self._repo(repo_type, f"{ns}/{name}", token)
            transfers = body.get("transfers") or ["basic"]
            if "basic" not in transfers:
                raise HubError(422, f"Only the 'basic' LFS transfer is supported, client offered {transfers}")
            objects = []
            for obj in body.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                entry = {"oid": oid, "size": size, "authenticated": True}
                if operation == "upload" and oid not in self.lfs_objects:
                    entry["actions"] = {
                        "upload": {"href": f"{self.endpoint}/__lfs__/upload/{oid}", "header": {}},
                        "verify": {"href": f"{self.endpoint}/__lfs__/verify/{oid}", "header": {}},
                    }
                elif operation == "download":
                    if oid not in self.lfs_objects:
                        entry["error"] = {"code": 404, "message": "Object does not exist"}
                objects.append(entry)
            return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_upload(self, req: "_HubHandler", oid) -> dict:
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        with self._lock:
            self.lfs_objects[oid] = req.body
        return {}

    def lfs_verify(self, req: "_HubHandler", oid) -> dict:
        req.require_token()
        body = req.json_body()
        with self._lock:
            content = self.lfs_objects.get(oid)
        if content is None or len(content) != int(body.get("size", len(content))):
            raise HubError(404, f"LFS object {oid} was not uploaded")
        return {}

    def commit(self, req: "_HubHandler", api_type, ns, name, revision) -> dict:
        token = req.require_token()
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        with self._lock:
            repo = self._repo(API_TYPES[api_type], f"{ns}/{name}", token)
            if req.query.get("create_pr", ["0"])[0] in ("1", "true"):
                base = self._commit_at(repo, revision)
                repo.num_prs += 1
                ref = f"refs/pr/{repo.num_prs}"
                repo.refs[ref] = base.oid
                pr_url = self._web_url(repo, "discussions", str(repo.num_prs))
            else:
                if revision not in repo.refs:
                    raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                ref, pr_url = revision, None
            base = repo.commits[repo.refs[ref]]
            parent = header.get("parentCommit")
            if parent and not base.oid.startswith(parent):
                raise HubError(412, f"Parent commit {parent} is not the head of {ref} ({base.oid})")
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding for {path}")
                    content = base64.b64decode(value["content"])
                    files[path] = Blob(content, False)
                elif key == "lfsFile":
                    content = self.lfs_objects.get(value.get("oid"))
                    if content is None:
                        raise HubError(400, f"LFS file {path} ({value.get('oid')}) was not uploaded")
                    files[path] = Blob(content, True)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    folder = path.rstrip("/") + "/"
                    for file_path in [p for p in files if p.startswith(folder)]:
                        del files[file_path]
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            commit = self._new_commit(repo, ref, files, header.get("summary", ""), header.get("description", ""))
            return {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": self._web_url(repo, "commit", commit.oid),
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }

    def resolve(self, req: "_HubHandler", prefix, ns, name, revision, path) -> tuple[int, bytes, dict]:
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(prefix or "", "model")
        with self._lock:
            repo = self._repo(repo_type, f"{ns}/{name}", req.token)
            commit = self._commit_at(repo, revision)
            blob = commit.files.get(path)
            if blob is None:
                raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.content))})
        content, status = blob.content, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("Range", "").strip())
        if match and (match.group(1) or match.group(2)):
            size = len(content)
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, size - int(match.group(2))), size - 1
            if start >= size or start > end:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            content, status = content[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return status, content, headers

    def commit_page(self, req: "_HubHandler", prefix, ns, name, oid) -> tuple[int, bytes, dict]:
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(prefix or "", "model")
        with self._lock:
            commit = self._repo(repo_type, f"{ns}/{name}", req.token).commits.get(oid)
            if commit is None:
                raise HubError(404, f"Commit {oid} not found", "RevisionNotFound")
            text = f"commit {commit.oid}\n\n{commit.title}\n\n{commit.description}\n" + "".join(
                f"{p}\n" for p in sorted(commit.files)
            )
        return 200, text.encode(), {"Content-Type": "text/plain; charset=utf-8"}


class _HubHandler(BaseHTTPRequestHandler):
    """Routes requests to the `LoopbackHub` methods; speaks HTTP/1.1 with keep-alive like the real Hub."""

    hub: LoopbackHub
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"
    timeout = 60  # idle keep-alive connections are dropped after this

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr logging
        pass

    # -- request helpers
    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        return auth[len("bearer ") :].strip() or None

    def require_token(self) -> str:
        if self.token is None:
            raise HubError(401, "Authentication required: this endpoint needs a token (Authorization: Bearer <token>)")
        return self.token

    def json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- dispatch
    def _handle(self):
        split = urlsplit(self.path)
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.body = self._read_body()  # always drain the body so the connection stays usable
        self.hub.requests.append((self.command, split.path))
        try:
            if self.token is not None and self.token not in self.hub.tokens:
                raise HubError(401, "Invalid credentials in Authorization header")
            for method, pattern, name in _ROUTES:
                match = pattern.match(split.path)
                if match and method == self.command:
                    args = [unquote(g) if g is not None else None for g in match.groups()]
                    result = getattr(self.hub, name)(self, *args)
                    break
            else:
                raise HubError(404, f"The loopback hub does not implement {self.command} {split.path}")
        except HubError as error:
            body = json.dumps({"error": error.message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            return self._send(error.status, body, headers)
        except Exception as error:  # a bug in the loopback hub: show it in the client's exception
            message = f"Loopback hub crashed: {type(error).__name__}: {error}"
            return self._send(500, json.dumps({"error": message}).encode(), {"X-Error-Message": message[:200]})
        if isinstance(result, tuple) and len(result) == 3:
            return self._send(*result)
        status, payload = result if isinstance(result, tuple) else (200, result)
        content_type = "application/vnd.git-lfs+json" if name == "lfs_batch" else "application/json"
        self._send(status, json.dumps(payload).encode(), {"Content-Type": content_type})

    def _send(self, status: int, body: bytes, headers: dict):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, "".join(c if 32 <= ord(c) < 127 else "?" for c in str(value)))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


__all__ = ["LoopbackHub", "Blob", "git_blob_sha1", "DEFAULT_GITATTRIBUTES"]
