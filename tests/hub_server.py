"""A small Hugging Face Hub look-alike for tests: standard library only, 127.0.0.1, random port.

It speaks enough of the Hub's HTTP protocol for the real ``huggingface_hub`` client to create
repos, commit (regular files inline, large files through the LFS batch API), list trees, read
repo info and download files (``/resolve`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
``X-Linked-Size`` and a redirect to a separate "CDN" listener for LFS objects).

Protocol facts it encodes:
- errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound);
- preupload answers ``regular`` (or ``lfs`` in LFS mode) and the remote oid of unchanged files,
  so the client drops no-op additions and an unchanged re-push makes no commit;
- ``POST /api/validate-yaml`` must exist because uploads that include README.md call it;
- every revision resolves by branch name or by commit sha.

The server is bounded: request bodies over ``MAX_BODY`` are refused, sockets time out, and a
watchdog shuts it down after ``lifetime`` seconds even if a test forgets to.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY = 64 * 2**20
LFS_THRESHOLD = 1024  # bytes: in LFS mode, larger files (and every .safetensors) go through LFS
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass
class RepoFile:
    data: bytes | None = None  # regular file content
    lfs_oid: str | None = None  # sha256 of an LFS object
    size: int = 0

    @property
    def blob_id(self) -> str:
        if self.lfs_oid is not None:
            return git_blob_sha1(lfs_pointer(self.lfs_oid, self.size))
        assert self.data is not None
        return git_blob_sha1(self.data)

    @property
    def preupload_oid(self) -> str:
        # What the client compares against its local oid: sha256 for LFS, git sha1 otherwise.
        return self.lfs_oid if self.lfs_oid is not None else self.blob_id


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, RepoFile]] = field(default_factory=dict)


@dataclass
class HubState:
    lfs_mode: bool = False
    token: str | None = None  # when set, writes need "Authorization: Bearer <token>"
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    commits_made: int = 0
    authorizations: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    corrupt: set[tuple[str, str]] = field(default_factory=set)  # (repo_id, path) served damaged
    extra_siblings: dict[str, list[str]] = field(default_factory=dict)  # hostile file names
    lock: threading.Lock = field(default_factory=threading.Lock)


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # seconds per socket operation

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        state.requests.append(f"{method} {url.path}")
        auth = self.headers.get("Authorization")
        if auth:
            state.authorizations.append(auth)
        try:
            body = self._read_body()
            with state.lock:
                status, headers, payload = self.server.hub.route(
                    method, url.path, parse_qs(url.query), body, auth
                )
        except HubError as e:
            status, payload = e.status, json.dumps({"error": str(e)}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": str(e)}
            if e.code:
                headers["X-Error-Code"] = e.code
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                total += size
                if total > MAX_BODY:
                    raise HubError(413, None, "request body too large")
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, None, "request body too large")
        return self.rfile.read(length) if length else b""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub, self.state = hub, hub.state


Response = tuple[int, dict[str, str], bytes]


def _json(obj: Any, status: int = 200) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class FakeHub:
    """The Hub's logic; ``start()`` serves it on the API port and a separate "CDN" port."""

    def __init__(self, *, lfs_mode: bool = False, token: str | None = None) -> None:
        self.state = HubState(lfs_mode=lfs_mode, token=token)
        self._servers: list[_Server] = []
        self._timer: threading.Timer | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, lifetime: float = 300.0) -> FakeHub:
        for _ in range(2):  # the API and the LFS "CDN" (another origin, like the real Hub)
            server = _Server(self)
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self._servers.append(server)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._timer is not None:
            self._timer.cancel()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def head(self, repo_id: str, revision: str = "main") -> str:
        return self.state.repos[repo_id].branches[revision]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.state.repos[repo_id]
        tree = repo.commits[repo.branches.get(revision, revision)]
        return {p: self._content(f) for p, f in tree.items()}

    # -- routing -------------------------------------------------------------------------

    _ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("POST", re.compile(r"/api/repos/create"), "_create_repo"),
        ("POST", re.compile(r"/api/validate-yaml"), "_validate_yaml"),
        ("GET", re.compile(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?"), "_repo_info"),
        ("GET", re.compile(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?"), "_tree"),
        ("POST", re.compile(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)"), "_preupload"),
        ("POST", re.compile(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)"), "_commit"),
        ("POST", re.compile(r"/api/models/([^/]+/[^/]+)/branch/([^/]+)"), "_branch"),
        ("POST", re.compile(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch"), "_lfs_batch"),
        ("PUT", re.compile(r"/lfs-upload/([0-9a-f]{64})"), "_lfs_upload"),
        ("GET", re.compile(r"/lfs-objects/([0-9a-f]{64})"), "_lfs_object"),
        ("HEAD", re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)"), "_resolve"),
        ("GET", re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)"), "_resolve"),
    ]

    def route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, auth: str | None
    ) -> Response:
        for verb, pattern, name in self._ROUTES:
            match = pattern.fullmatch(path)
            if verb == method and match:
                args = [unquote(g) if g is not None else None for g in match.groups()]
                if method in ("POST", "PUT") and name not in ("_validate_yaml", "_lfs_upload"):
                    self._check_auth(auth)
                handler = getattr(self, name)
                return handler(*args, query=query, body=body, method=method)  # type: ignore[no-any-return]
        raise HubError(404, None, f"no route for {method} {path}")

    def _check_auth(self, auth: str | None) -> None:
        if self.state.token is not None and auth != f"Bearer {self.state.token}":
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _resolve_rev(self, repo: Repo, revision: str | None) -> str:
        revision = revision or "main"
        sha = repo.branches.get(revision) or (revision if revision in repo.commits else None)
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    def _content(self, f: RepoFile) -> bytes:
        if f.lfs_oid is not None:
            return self.state.lfs_objects[f.lfs_oid]
        assert f.data is not None
        return f.data

    def _new_commit(self, repo_id: str, repo: Repo, files: dict[str, RepoFile]) -> str:
        self.state.commits_made += 1
        sha = hashlib.sha1(f"{repo_id}:{self.state.commits_made}".encode()).hexdigest()
        repo.commits[sha] = files
        return sha

    # -- API endpoints -------------------------------------------------------------------

    def _create_repo(self, *, body: bytes, **_: Any) -> Response:
        data = json.loads(body)
        repo_id = f"{data.get('organization') or 'user'}/{data['name']}"
        if repo_id in self.state.repos:
            url = f"{self.url}/{repo_id}"
            return _json({"error": "You already created this model repo", "url": url}, 409)
        repo = Repo(private=data.get("visibility") == "private")
        gitattributes = RepoFile(data=GITATTRIBUTES, size=len(GITATTRIBUTES))
        repo.branches["main"] = self._new_commit(repo_id, repo, {".gitattributes": gitattributes})
        self.state.repos[repo_id] = repo
        return _json({"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, *, body: bytes, **_: Any) -> Response:
        content = json.loads(body).get("content", "")
        if content.startswith("---") and content.count("\n---") < 1:
            return _json({"errors": [{"message": "unterminated front matter"}]}, 400)
        return _json({"errors": [], "warnings": []})

    def _file_json(self, path: str, f: RepoFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
        if f.lfs_oid is not None:
            pointer = lfs_pointer(f.lfs_oid, f.size)
            entry["lfs"] = {"oid": f.lfs_oid, "size": f.size, "pointerSize": len(pointer)}
        return entry

    def _repo_info(self, repo_id: str, revision: str | None, *, query: Any, **_: Any) -> Response:
        repo = self._repo(repo_id)
        sha = self._resolve_rev(repo, revision)
        siblings: list[dict[str, Any]] = []
        for path, f in sorted(repo.commits[sha].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if query.get("blobs"):
                entry = self._file_json(path, f)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {
                        "size": lfs["size"],
                        "sha256": lfs["oid"],
                        "pointerSize": lfs["pointerSize"],
                    }
            siblings.append(sibling)
        siblings += [{"rfilename": name} for name in self.state.extra_siblings.get(repo_id, [])]
        info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private}
        return _json({**info, "siblings": siblings, "tags": [], "downloads": 0})

    def _tree(self, repo_id: str, revision: str, prefix: str | None, **_: Any) -> Response:
        repo = self._repo(repo_id)
        tree = repo.commits[self._resolve_rev(repo, revision)]
        entries = [
            self._file_json(p, f)
            for p, f in sorted(tree.items())
            if prefix is None or p.startswith(prefix.rstrip("/") + "/")
        ]
        return _json(entries)

    def _preupload(self, repo_id: str, revision: str, *, body: bytes, **_: Any) -> Response:
        repo = self._repo(repo_id)
        tree = repo.commits[self._resolve_rev(repo, revision)]
        files = []
        for item in json.loads(body)["files"]:
            path, size = item["path"], item["size"]
            lfs = self.state.lfs_mode and (size > LFS_THRESHOLD or path.endswith(".safetensors"))
            remote = tree.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": remote.preupload_oid if remote is not None else None,
                }
            )
        return _json({"files": files})

    def _commit(self, repo_id: str, revision: str, *, body: bytes, **_: Any) -> Response:
        repo = self._repo(repo_id)
        if revision not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = dict(repo.commits[repo.branches[revision]])
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                continue
            path = value["path"]
            if path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, None, f"invalid path {path!r}")
            if key == "file":
                data = base64.b64decode(value["content"])
                files[path] = RepoFile(data=data, size=len(data))
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs_objects:
                    raise HubError(422, None, f"LFS object {value['oid']} was never uploaded")
                files[path] = RepoFile(lfs_oid=value["oid"], size=value["size"])
            elif key == "deletedFile":
                files.pop(path, None)
            else:
                raise HubError(400, None, f"unsupported commit operation {key!r}")
        sha = self._new_commit(repo_id, repo, files)
        repo.branches[revision] = sha
        url = f"{self.url}/{repo_id}/commit/{sha}"
        return _json({"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

    def _branch(self, repo_id: str, branch: str, *, body: bytes, **_: Any) -> Response:
        repo = self._repo(repo_id)
        if branch in repo.branches:
            return _json({"error": "Reference already exists"}, 409)
        start = (json.loads(body) if body else {}).get("startingPoint")
        repo.branches[branch] = self._resolve_rev(repo, start)
        return _json({})

    # -- LFS and downloads ---------------------------------------------------------------

    def _lfs_batch(self, repo_id: str, *, body: bytes, **_: Any) -> Response:
        self._repo(repo_id)
        objects = []
        for obj in json.loads(body)["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return _json({"transfer": "basic", "objects": objects})

    def _lfs_upload(self, oid: str, *, body: bytes, **_: Any) -> Response:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, "uploaded content does not match its oid")
        self.state.lfs_objects[oid] = body
        return _json({})

    def _lfs_object(self, oid: str, **_: Any) -> Response:
        data = self.state.lfs_objects.get(oid)
        if data is None:
            raise HubError(404, None, "no such object")
        if oid in {o for r, p in self.state.corrupt for o in self._lfs_oids(r, p)}:
            data = _damage(data)
        return 200, {"Content-Type": "application/octet-stream"}, data

    def _lfs_oids(self, repo_id: str, path: str) -> set[str]:
        repo = self.state.repos[repo_id]
        return {t[path].lfs_oid for t in repo.commits.values() if path in t} - {None}  # type: ignore[misc]

    def _resolve(
        self, repo_id: str, revision: str, path: str, *, method: str, **_: Any
    ) -> Response:
        repo = self._repo(repo_id)
        sha = self._resolve_rev(repo, revision)
        f = repo.commits[sha].get(path)
        if f is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
            return 404, {**headers, "Content-Type": "application/json"}, b'{"error": "not found"}'
        headers = {"X-Repo-Commit": sha, "ETag": f'"{f.blob_id}"'}
        if f.lfs_oid is not None:
            headers.update(
                {
                    "Location": f"{self.cdn_url}/lfs-objects/{f.lfs_oid}",
                    "X-Linked-Etag": f'"{f.lfs_oid}"',
                    "X-Linked-Size": str(f.size),
                    "Content-Length": "0",
                }
            )
            return 302, headers, b""
        data = f.data or b""
        if (repo_id, path) in self.state.corrupt:
            data = _damage(data)
        headers["Content-Length"] = str(len(data))
        return 200, {**headers, "Content-Type": "application/octet-stream"}, data


def _damage(data: bytes) -> bytes:
    """The same length with one byte flipped in the middle: only a hash check notices."""
    if not data:
        return data
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


__all__ = ["FakeHub", "git_blob_sha1"]
