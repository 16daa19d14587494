"""A strict stand-in for the Hugging Face Hub HTTP API, served on 127.0.0.1 for tests.

There is no Hub reachable from the test machines, so the push is exercised end to end by
the real huggingface_hub client against this server. It implements only the routes
huggingface_hub 2.4 calls for create_repo / create_commit (legacy LFS path, Xet disabled) /
model_info / hf_hub_download, as read from its hf_api.py, _commit_api.py, lfs.py and
file_download.py, and it is deliberately strict: unknown routes get 404 (and are recorded
in ``rejected``), malformed commit or LFS payloads get 400, LFS uploads are checked against
their announced sha256 and size, and commits may only reference verified LFS objects.

Not modelled (so unverified by the tests): the Xet storage protocol, multipart LFS,
pull requests, the Hub's Markdown rendering and metadata checks beyond the few below,
and Space builds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
KIND = r"(?P<kind>models|spaces)"
LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack", ".onnx")
BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}
SPACE_SDKS = {"gradio", "streamlit", "docker", "static"}


def front_matter(card: str) -> dict:
    """The YAML metadata block at the top of a card (README.md), or {} without one."""
    match = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    return (yaml.safe_load(match.group(1)) or {}) if match else {}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """What the Hub reports as a file's oid: git blob sha1, or the sha256 of an LFS object."""
        return self.sha256 if self.lfs else git_blob_oid(self.data)


@dataclass
class Repo:
    kind: str  # "model" | "space"
    private: bool
    sdk: str | None = None
    hardware: str | None = None
    gated: bool | str = False
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)  # commit oid -> tree
    messages: list[str] = field(default_factory=list)

    def tree(self, revision: str) -> tuple[str, dict[str, Entry]] | None:
        oid = self.branches.get(revision, revision)
        return (oid, self.commits[oid]) if oid in self.commits else None


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class FakeHub:
    """State plus a threaded HTTP server; use as a context manager."""

    def __init__(self, users: dict[str, str]):
        self.users = users  # token -> user name
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}  # verified objects, by sha256
        self.pending: dict[str, bytes] = {}  # uploaded, not yet verified
        self.upload_tickets: dict[str, tuple[str, int]] = {}  # ticket -> (oid, size)
        self.requests: list[tuple[str, str, int]] = []
        self.rejected: list[tuple[str, str, int, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], *, gated: bool | str = False, kind: str = "model"
    ) -> None:
        """Seed a repository (e.g. a gated base model) with one commit."""
        repo = Repo(kind=kind, private=False, gated=gated)
        self._commit(repo, "main", {p: Entry(d, p.endswith(LFS_SUFFIXES)) for p, d in files.items()}, "seed")
        self.repos[(kind, repo_id)] = repo

    def files(self, repo_id: str, kind: str = "model", revision: str = "main") -> dict[str, bytes]:
        tree = self.repos[(kind, repo_id)].tree(revision)
        return {path: entry.data for path, entry in tree[1].items()} if tree else {}

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _commit(repo: Repo, branch: str, tree: dict[str, Entry], message: str) -> str:
        parent = repo.branches.get(branch, "")
        digest = hashlib.sha1(parent.encode() + message.encode())
        for path in sorted(tree):
            digest.update(path.encode() + tree[path].oid.encode())
        oid = digest.hexdigest()
        repo.commits[oid] = tree
        repo.branches[branch] = oid
        repo.messages.append(message)
        return oid

    def _user(self, headers, required: bool = True) -> str | None:
        auth = headers.get("Authorization")
        if auth is None:
            if required:
                raise HttpError(401, "Authorization header is required")
            return None
        if not auth.startswith("Bearer ") or auth[7:] not in self.users:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return self.users[auth[7:]]

    def _repo(self, kind: str, repo_id: str, headers, write: bool = False) -> Repo:
        user = self._user(headers, required=write)
        repo = self.repos.get((kind, repo_id))
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            raise HttpError(404, "Repository not found", "RepoNotFound")
        if write and user != repo_id.split("/")[0]:
            raise HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _prefix(kind: str) -> str:
        return "spaces/" if kind in ("space", "spaces") else ""

    # ------------------------------------------------------------ routes
    def whoami(self, req):
        user = self._user(req.headers)
        return 200, {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {"type": "access_token"}}

    def agent_harnesses(self, req):
        """Registry huggingface_hub fetches to fill its user-agent; empty: no agent is detected."""
        return 200, {"standardEnvVars": [], "harnesses": {}}

    def create_repo(self, req):
        user = self._user(req.headers)
        body = req.json()
        name, org, kind = body.get("name"), body.get("organization"), body.get("type", "model")
        allowed = {"name", "organization", "visibility", "type", "sdk", "hardware", "private"}
        if not isinstance(name, str) or set(body) - allowed or kind not in ("model", "space"):
            raise HttpError(400, f"malformed create request: {sorted(body)}")
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}", name) or ".." in name:
            raise HttpError(400, f"invalid repo name {name!r}")
        if (org or user) != user:
            raise HttpError(403, f"You don't have the rights to create a repo under {org}")
        if kind == "space" and body.get("sdk") not in SPACE_SDKS:
            raise HttpError(400, "a Space needs an sdk")
        repo_id = f"{user}/{name}"
        if (kind, repo_id) in self.repos:
            # Like the Hub: the conflict still carries the url (create_repo(exist_ok=True) reads it).
            raise HttpError(409, "You already created this repo", url=f"{self.url}/{self._prefix(kind)}{repo_id}")
        repo = Repo(
            kind,
            private=body.get("visibility", "public") == "private",
            sdk=body.get("sdk"),
            hardware=body.get("hardware"),
        )
        self._commit(
            repo,
            "main",
            {".gitattributes": Entry(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", False)},
            "initial commit",
        )
        self.repos[(kind, repo_id)] = repo
        return 200, {"url": f"{self.url}/{self._prefix(kind)}{repo_id}", "name": repo_id}

    def validate_yaml(self, req):
        self._user(req.headers)
        body = req.json()
        content, kind = body.get("content"), body.get("repoType")
        if not isinstance(content, str) or kind not in ("model", "space"):
            raise HttpError(400, "malformed validate-yaml request")
        errors = []
        try:
            meta = front_matter(content)
        except yaml.YAMLError as exc:
            meta = {}
            errors.append(f"invalid YAML: {exc}")
        if meta.get("base_model_relation") not in (None, *BASE_MODEL_RELATIONS):
            errors.append(f"base_model_relation must be one of {sorted(BASE_MODEL_RELATIONS)}")
        for entry in meta.get("model-index") or []:
            for result in entry.get("results", []):
                for metric in result.get("metrics", []):
                    if not isinstance(metric.get("value"), (int, float)) or not metric.get("type"):
                        errors.append(f"model-index metric needs a type and a numeric value: {metric}")
        if kind == "space":
            if meta.get("sdk") not in SPACE_SDKS:
                errors.append("sdk must be one of " + ", ".join(sorted(SPACE_SDKS)))
            if len(str(meta.get("short_description", ""))) > 60:
                errors.append("short_description is longer than 60 characters")
        status = 400 if errors else 200
        return status, {"errors": [{"message": e} for e in errors], "warnings": []}

    def info(self, req, kind, repo, revision=None):
        r = self._repo(kind[:-1], repo, req.headers)
        found = r.tree(unquote(revision or "main"))
        if found is None:
            raise HttpError(404, "Revision not found", "RevisionNotFound")
        oid, tree = found
        data = {
            "id": repo,
            "author": repo.split("/")[0],
            "sha": oid,
            "private": r.private,
            "gated": r.gated,
            "disabled": False,
            "siblings": [{"rfilename": p} for p in sorted(tree)],
            "tags": [],
        }
        if "README.md" in tree:  # as the Hub does: the card's metadata, parsed
            data["cardData"] = front_matter(tree["README.md"].data.decode())
        if kind == "spaces":
            data |= {
                "sdk": r.sdk,
                "runtime": {"stage": "BUILDING", "hardware": {"current": None, "requested": r.hardware}},
            }
        return 200, data

    def tree(self, req, kind, repo, revision, path=""):
        r = self._repo(kind[:-1], repo, req.headers)
        found = r.tree(unquote(revision))
        if found is None:
            raise HttpError(404, "Revision not found", "RevisionNotFound")
        prefix = unquote(path).strip("/")
        out = []
        for p, e in sorted(found[1].items()):
            if prefix and not p.startswith(prefix + "/"):
                continue
            item = {"type": "file", "oid": git_blob_oid(e.data), "size": len(e.data), "path": p}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": len(e.data), "pointerSize": 134}
            out.append(item)
        return 200, out

    def preupload(self, req, kind, repo, revision):
        r = self._repo(kind[:-1], repo, req.headers, write=True)
        body = req.json()
        files = body.get("files")
        if not isinstance(files, list) or set(body) - {"files", "gitIgnore"}:
            raise HttpError(400, "malformed preupload request")
        tree = (r.tree(unquote(revision)) or (None, {}))[1]
        out = []
        for f in files:
            if set(f) != {"path", "sample", "size"} or not isinstance(f["size"], int):
                raise HttpError(400, f"malformed preupload entry {sorted(f)}")
            sample = base64.b64decode(f["sample"], validate=True)
            if len(sample) > 512:
                raise HttpError(400, "sample longer than 512 bytes")
            lfs = f["size"] >= LFS_THRESHOLD or f["path"].endswith(LFS_SUFFIXES) or b"\0" in sample
            existing = tree.get(f["path"])
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.oid if existing else None,
                }
            )
        return 200, {"files": out, "commitOid": r.branches.get(unquote(revision))}

    def lfs_batch(self, req, space, repo):
        kind = "space" if space else "model"
        self._repo(kind, repo, req.headers, write=True)
        if not req.headers.get("Content-Type", "").startswith("application/vnd.git-lfs+json"):
            raise HttpError(400, "LFS batch needs Content-Type application/vnd.git-lfs+json")
        body = req.json()
        if (
            body.get("operation") != "upload"
            or "basic" not in body.get("transfers", [])
            or body.get("hash_algo") != "sha256"
        ):
            raise HttpError(400, "only basic sha256 uploads are supported")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (
                isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int) and size >= 0
            ):
                raise HttpError(400, f"malformed LFS object {obj}")
            item = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs:
                ticket = secrets.token_hex(8)
                self.upload_tickets[ticket] = (oid, size)
                item["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{oid}?ticket={ticket}"},
                    "verify": {"href": f"{self.url}/{self._prefix(kind)}{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(item)
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_put(self, req, oid):
        """Like a pre-signed storage URL: no Hub token, but a one-time ticket from the batch call."""
        ticket = parse_qs(urlsplit(req.path).query).get("ticket", [""])[0]
        expected = self.upload_tickets.pop(ticket, None)
        if expected is None or expected[0] != oid:
            raise HttpError(403, "invalid or reused upload ticket")
        data = req.body()
        if len(data) != expected[1] or hashlib.sha256(data).hexdigest() != oid:
            raise HttpError(400, "uploaded content does not match its announced sha256 and size")
        self.pending[oid] = data
        return 200, {}

    def lfs_verify(self, req, space, repo):
        self._repo("space" if space else "model", repo, req.headers, write=True)
        body = req.json()
        data = self.pending.get(body.get("oid"))
        if data is None or len(data) != body.get("size"):
            raise HttpError(404, "object not uploaded or size mismatch")
        self.lfs[body["oid"]] = self.pending.pop(body["oid"])
        return 200, {}

    def commit(self, req, kind, repo, revision):
        r = self._repo(kind[:-1], repo, req.headers, write=True)
        if parse_qs(urlsplit(req.path).query):
            raise HttpError(400, "query parameters (create_pr, hot_reload) are not supported here")
        if req.headers.get("Content-Type") != "application/x-ndjson":
            raise HttpError(400, "commit payload must be application/x-ndjson")
        branch = unquote(revision)
        if branch not in r.branches:
            raise HttpError(404, "Revision not found", "RevisionNotFound")
        try:
            lines = [json.loads(line) for line in req.body().decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"malformed ndjson: {exc}") from None
        if not lines or lines[0].get("key") != "header" or not (lines[0].get("value") or {}).get("summary"):
            raise HttpError(400, "the first line must be a header with a summary")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, r.branches[branch]):
            raise HttpError(412, "parent commit is not the head of the branch")
        tree = dict(r.commits[r.branches[branch]])
        seen = set()
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path")
            if (
                not isinstance(path, str)
                or not path
                or path.startswith("/")
                or ".." in path.split("/")
                or path.split("/")[0] in (".git", ".cache")
                or path in seen
            ):
                raise HttpError(400, f"invalid or repeated path {path!r}")
            seen.add(path)
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HttpError(400, "regular files must be base64")
                try:
                    data = base64.b64decode(value["content"], validate=True)
                except (KeyError, ValueError):
                    raise HttpError(400, f"bad base64 for {path}") from None
                tree[path] = Entry(data, False)
            elif key == "lfsFile":
                oid = value.get("oid")
                if value.get("algo") != "sha256" or oid not in self.lfs:
                    raise HttpError(400, f"LFS object for {path} was not uploaded and verified")
                if "size" in value and value["size"] != len(self.lfs[oid]):
                    raise HttpError(400, f"size of {path} does not match its LFS object")
                tree[path] = Entry(self.lfs[oid], True)
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HttpError(404, f"{path} does not exist", "EntryNotFound")
            else:
                raise HttpError(400, f"unknown commit operation {key!r}")
        oid = self._commit(r, branch, tree, header["summary"])
        return 200, {
            "commitUrl": f"{self.url}/{self._prefix(kind[:-1])}{repo}/commit/{oid}",
            "commitOid": oid,
            "pullRequestUrl": None,
        }

    def branch(self, req, kind, repo, name):
        r = self._repo(kind[:-1], repo, req.headers, write=True)
        name = unquote(name)
        if name in r.branches:
            raise HttpError(409, "Branch already exists")
        start = (req.json() or {}).get("startingPoint", "main")
        found = r.tree(start)
        if found is None:
            raise HttpError(404, "Revision not found", "RevisionNotFound")
        r.branches[name] = found[0]
        return 200, {}

    def hardware(self, req, repo):
        r = self._repo("space", repo, req.headers, write=True)
        flavor = req.json().get("flavor")
        if not isinstance(flavor, str):
            raise HttpError(400, "flavor is required")
        r.hardware = flavor
        return 200, {"stage": "BUILDING", "hardware": {"current": None, "requested": flavor}}

    def resolve(self, req, space, repo, revision, path):
        r = self._repo("space" if space else "model", repo, req.headers)
        found = r.tree(unquote(revision))
        if found is None:
            raise HttpError(404, "Revision not found", "RevisionNotFound")
        oid, tree = found
        entry = tree.get(unquote(path))
        if entry is None:
            raise HttpError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": oid, "ETag": f'"{entry.oid}"', "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(len(entry.data))}
        return 200, (entry.data, headers)

    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "agent_harnesses"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/{KIND}/{REPO}", "info"),
        ("GET", rf"/api/{KIND}/{REPO}/revision/(?P<revision>[^/]+)", "info"),
        ("GET", rf"/api/{KIND}/{REPO}/tree/(?P<revision>[^/]+)(?P<path>/.*)?", "tree"),
        ("POST", rf"/api/{KIND}/{REPO}/preupload/(?P<revision>[^/]+)", "preupload"),
        ("POST", rf"/api/{KIND}/{REPO}/commit/(?P<revision>[^/]+)", "commit"),
        ("POST", rf"/api/{KIND}/{REPO}/branch/(?P<name>[^/]+)", "branch"),
        ("POST", rf"/api/spaces/{REPO}/hardware", "hardware"),
        ("POST", rf"/(?P<space>spaces/)?{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", rf"/(?P<space>spaces/)?{REPO}\.git/info/lfs/objects/verify", "lfs_verify"),
        ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("GET", rf"/(?P<space>spaces/)?{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/(?P<space>spaces/)?{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def _handler(hub):  # noqa: N805 - closes over the FakeHub instance
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean; requests are recorded instead
                pass

            def body(self) -> bytes:
                if not hasattr(self, "_body"):
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                        chunks = []
                        while size := int(self.rfile.readline().split(b";")[0], 16):
                            chunks.append(self.rfile.read(size))
                            self.rfile.readline()
                        self.rfile.readline()
                        self._body = b"".join(chunks)
                    else:
                        self._body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                return self._body

            def json(self):
                try:
                    return json.loads(self.body() or b"null")
                except json.JSONDecodeError:
                    raise HttpError(400, "body is not JSON") from None

            def _dispatch(self):
                self.__dict__.pop("_body", None)  # one handler serves every request of a keep-alive connection
                path = urlsplit(self.path).path
                status, payload = 404, None
                for method, pattern, name in hub.ROUTES:
                    match = re.fullmatch(pattern, path)
                    if method == self.command and match:
                        args = {k: v for k, v in match.groupdict().items() if v is not None or k == "space"}
                        try:
                            with hub.lock:
                                status, payload = getattr(hub, name)(self, **args)
                        except HttpError as exc:
                            status, payload = exc.status, exc
                        break
                else:
                    payload = HttpError(404, f"no such route: {self.command} {path}")
                self.body()  # drain, so keep-alive connections stay in sync
                hub.requests.append((self.command, path, status))
                self._send(status, payload)

            def _send(self, status, payload):
                headers = {}
                if isinstance(payload, HttpError):
                    hub.rejected.append((self.command, urlsplit(self.path).path, status, payload.message))
                    headers = {"X-Error-Message": payload.message}
                    if payload.code:
                        headers["X-Error-Code"] = payload.code
                    data, ctype = json.dumps({"error": payload.message, **payload.extra}).encode(), "application/json"
                elif isinstance(payload, tuple):
                    data, extra = payload
                    headers, ctype = extra, extra.pop("Content-Type")
                else:
                    data, ctype = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

        return Handler
