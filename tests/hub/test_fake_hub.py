"""The loopback Hub used by the push tests is strict: it refuses what the real Hub refuses,
so a push that passes against it cannot rely on sloppy requests."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request

import pytest

from .conftest import FAKE_TOKEN, USER
from .fake_hub import FakeHub


@pytest.fixture
def hub():
    with FakeHub({FAKE_TOKEN: USER}) as server:
        yield server


def call(hub, method, path, body=None, content_type="application/json", token=FAKE_TOKEN):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(hub.url + path, data=data, method=method)
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ndjson(*lines):
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_strictness(hub):
    repo = f"{USER}/r"
    assert call(hub, "POST", "/api/repos/create", {"name": "r", "organization": None})[0] == 200
    assert call(hub, "GET", "/api/models/nobody/route/extra/segments")[0] == 404
    assert call(hub, "POST", "/api/whatever", {})[0] == 404
    assert call(hub, "GET", "/api/whoami-v2", token="hf_wrong")[0] == 401

    header = {"key": "header", "value": {"summary": "s", "description": ""}}
    good = {
        "key": "file",
        "value": {"path": "a.txt", "content": base64.b64encode(b"hi").decode(), "encoding": "base64"},
    }
    commit = f"/api/models/{repo}/commit/main"
    assert call(hub, "POST", commit, ndjson(header, good), content_type="application/json")[0] == 400
    assert call(hub, "POST", commit, ndjson(good), content_type="application/x-ndjson")[0] == 400  # no header
    escape = {"key": "file", "value": {**good["value"], "path": "../x"}}
    assert call(hub, "POST", commit, ndjson(header, escape), content_type="application/x-ndjson")[0] == 400
    data = b"weights" * 100
    oid = hashlib.sha256(data).hexdigest()
    lfs = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}}
    assert call(hub, "POST", commit, ndjson(header, lfs), content_type="application/x-ndjson")[0] == 400  # not uploaded

    batch = {
        "operation": "upload",
        "transfers": ["basic"],
        "objects": [{"oid": oid, "size": len(data)}],
        "hash_algo": "sha256",
    }
    status, body = call(hub, "POST", f"/{repo}.git/info/lfs/objects/batch", batch, "application/vnd.git-lfs+json")
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"].removeprefix(hub.url)
    assert call(hub, "PUT", href, data[:-1] + b"X", "application/octet-stream", token=None)[0] == 400  # wrong sha256
    assert call(hub, "PUT", href, data, "application/octet-stream", token=None)[0] == 403  # ticket used up
    assert hub.files(repo) == {".gitattributes": hub.files(repo)[".gitattributes"]}  # nothing committed
