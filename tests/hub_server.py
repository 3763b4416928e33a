"""A minimal in-memory Hugging Face Hub that the unmodified ``huggingface_hub`` client can talk to.

It listens on ``127.0.0.1`` (random free port) and implements exactly what ``HfApi.create_repo``,
``upload_folder``/``create_commit`` (regular, non-LFS files), ``validate_yaml``, ``repo_info``/``model_info``,
``list_repo_tree``, ``hf_hub_download`` and ``snapshot_download`` send for **model** repos:

- ``POST /api/repos/create``
- ``POST /api/models/{repo}/preupload/{rev}`` (every file answered with uploadMode ``"regular"``)
- ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: header, base64 ``file``, ``deletedFile``, ``deletedFolder``)
- ``POST /api/validate-yaml``
- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``snapshot_download`` lists files with it)
- ``GET|HEAD /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``

Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so that the
client raises its usual typed exceptions. Anything else is answered ``404`` and recorded in
:attr:`FakeHub.unhandled` so a test can assert the client used nothing unexpected.

Failures can be injected per endpoint with :attr:`FakeHub.fail`, e.g. ``hub.fail["commit"] = 403``. Endpoint
names: ``create``, ``preupload``, ``commit``, ``validate-yaml``, ``info``, ``tree``, ``resolve``. Avoid 5xx on
``preupload``/``commit``: the client retries those with exponential backoff (tens of seconds).

Example
-------
>>> with FakeHub() as hub:  # doctest: +SKIP
...     api = HfApi(endpoint=hub.url, token="fake")
...     api.create_repo("user/repo")
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub"]

_API_REPO = re.compile(
    r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)"
    r"(?:/(?P<action>preupload|commit|revision|tree)(?:/(?P<rest>.+))?)?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit sha
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> files

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.snapshots:
            return revision
        return None


class FakeHub:
    """In-memory Hub served over HTTP on 127.0.0.1; start/stop it or use it as a context manager.

    Attributes
    ----------
    url : str
        Endpoint to pass as ``HfApi(endpoint=...)`` / ``endpoint=``.
    repos : dict
        Repo id -> in-memory repo (branches and per-commit snapshots).
    requests : list of tuple
        ``(method, path)`` of every request received, in order.
    unhandled : list of tuple
        Requests no route matched (should stay empty).
    fail : dict
        Endpoint name -> HTTP status to answer instead of serving the request.
    """

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._commit_counter = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running; call start() first.")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- state helpers ---------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Return the files of ``repo_id`` at ``revision`` (branch or commit sha)."""
        repo = self.repos[repo_id]
        sha = repo.resolve(revision)
        if sha is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(repo.snapshots[sha])

    def _new_commit(self, repo: _Repo, branch: str, files: dict[str, bytes]) -> str:
        self._commit_counter += 1
        sha = hashlib.sha1(f"{repo.repo_id}:{self._commit_counter}:{time.time_ns()}".encode()).hexdigest()
        repo.snapshots[sha] = files
        repo.branches[branch] = sha
        return sha


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing --------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, *, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _error(self, status: int, message: str, code: str | None = None, *, head: bool = False) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message} if code else {"X-Error-Message": message}
        self._send(status, json.dumps({"error": message}).encode(), headers=headers, head=head)

    def _injected_failure(self, endpoint: str, *, head: bool = False) -> bool:
        status = self.fake_hub.fail.get(endpoint)
        if status is None:
            return False
        self._error(status, f"injected failure on {endpoint}", head=head)
        return True

    def _route(self, method: str) -> None:
        hub = self.fake_hub
        path = urlsplit(self.path).path
        with hub._lock:
            hub.requests.append((method, path))
        body = self._body() if method == "POST" else b""
        with hub._lock:
            handled = self._dispatch(method, path, body)
        if not handled:
            # huggingface_hub >= 2.4 looks up an agent registry at most once a day: not part of what is tested.
            if not path.startswith("/api/agent-harnesses"):
                with hub._lock:
                    hub.unhandled.append((method, path))
            self._error(404, f"FakeHub: no route for {method} {path}", head=method == "HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    # -- routes ----------------------------------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, body: bytes) -> bool:
        if method == "POST" and path == "/api/repos/create":
            self._create_repo(body)
            return True
        if method == "POST" and path == "/api/validate-yaml":
            if not self._injected_failure("validate-yaml"):
                self._json(200, {"errors": [], "warnings": []})
            return True
        match = _API_REPO.match(path)
        if match:
            repo_id, action, rest = match["repo"], match["action"], match["rest"]
            if method == "POST" and action == "preupload" and rest:
                self._preupload(repo_id, unquote(rest), body)
                return True
            if method == "POST" and action == "commit" and rest:
                self._commit(repo_id, unquote(rest), body)
                return True
            if method == "GET" and action is None:
                self._info(repo_id, "main")
                return True
            if method == "GET" and action == "revision" and rest:
                self._info(repo_id, unquote(rest))
                return True
            if method == "GET" and action == "tree" and rest:
                self._tree(repo_id, rest)
                return True
            return False
        match = _RESOLVE.match(path)
        if match and method in ("GET", "HEAD"):
            self._resolve(match["repo"], unquote(match["rev"]), unquote(match["path"]), head=method == "HEAD")
            return True
        return False

    def _repo_or_404(self, repo_id: str, *, head: bool = False) -> _Repo | None:
        repo = self.fake_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound", head=head)
        return repo

    def _create_repo(self, body: bytes) -> None:
        if self._injected_failure("create"):
            return
        payload = json.loads(body or b"{}")
        if payload.get("type") not in (None, "model"):
            self._error(400, "FakeHub only serves model repos")
            return
        name, organization = payload.get("name"), payload.get("organization")
        repo_id = f"{organization}/{name}" if organization else f"user/{name}"
        url = f"{self.fake_hub.url}/{repo_id}"
        if repo_id in self.fake_hub.repos:
            self._json(409, {"error": "You already created this model repo", "url": url})
            return
        repo = _Repo(repo_id=repo_id, private=payload.get("visibility") == "private")
        self.fake_hub.repos[repo_id] = repo
        self.fake_hub._new_commit(
            repo, "main", {".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"}
        )
        self._json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _preupload(self, repo_id: str, revision: str, body: bytes) -> None:
        if self._injected_failure("preupload"):
            return
        repo = self._repo_or_404(repo_id)
        if repo is None:
            return
        sha = repo.resolve(revision)
        current = repo.snapshots[sha] if sha else {}
        files = json.loads(body)["files"]
        answer = []
        for item in files:
            existing = current.get(item["path"])
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": _git_blob_sha1(existing) if existing is not None else None,
                }
            )
        self._json(200, {"files": answer, "commitOid": sha})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        if self._injected_failure("commit"):
            return
        repo = self._repo_or_404(repo_id)
        if repo is None:
            return
        if "ndjson" not in (self.headers.get("Content-Type") or ""):
            self._error(400, "commit payload must be application/x-ndjson")
            return
        parent = repo.resolve(revision)
        if parent is None and revision != "main":
            self._error(404, f"Revision {revision} not found", "RevisionNotFound")
            return
        files = dict(repo.snapshots[parent]) if parent else {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                continue
            if key == "file":
                if value.get("encoding") != "base64":
                    self._error(400, f"unsupported encoding {value.get('encoding')!r}")
                    return
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:  # lfsFile / copies: never requested since every preupload answer is "regular"
                self._error(400, f"FakeHub does not support commit operation {key!r}")
                return
        sha = self.fake_hub._new_commit(repo, revision, files)
        self._json(
            200,
            {
                "commitUrl": f"{self.fake_hub.url}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
            },
        )

    def _info(self, repo_id: str, revision: str) -> None:
        if self._injected_failure("info"):
            return
        repo = self._repo_or_404(repo_id)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, f"Revision {revision} not found in {repo_id}", "RevisionNotFound")
            return
        files = repo.snapshots[sha]
        self._json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": "2025-01-01T00:00:00.000Z",
                "createdAt": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": name} for name in sorted(files)],
            },
        )

    def _tree(self, repo_id: str, rest: str) -> None:
        if self._injected_failure("tree"):
            return
        repo = self._repo_or_404(repo_id)
        if repo is None:
            return
        revision, _, prefix = rest.partition("/")
        sha = repo.resolve(unquote(revision))
        if sha is None:
            self._error(404, f"Revision {revision} not found in {repo_id}", "RevisionNotFound")
            return
        prefix = unquote(prefix).strip("/")
        entries = [
            {"type": "file", "path": name, "size": len(content), "oid": _git_blob_sha1(content)}
            for name, content in sorted(repo.snapshots[sha].items())
            if not prefix or name.startswith(prefix + "/")
        ]
        self._json(200, entries)

    def _resolve(self, repo_id: str, revision: str, path: str, *, head: bool) -> None:
        if self._injected_failure("resolve", head=head):
            return
        repo = self._repo_or_404(repo_id, head=head)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, f"Revision {revision} not found in {repo_id}", "RevisionNotFound", head=head)
            return
        content = repo.snapshots[sha].get(path)
        if content is None:
            self._error(404, f"Entry {path} not found in {repo_id}@{revision}", "EntryNotFound", head=head)
            return
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_blob_sha1(content)}"'}
        self._send(200, content, content_type="application/octet-stream", headers=headers, head=head)
