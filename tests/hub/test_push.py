"""`evop-hub push` end to end, by the real huggingface_hub client over HTTP.

There is no Hugging Face Hub reachable here, so the tests start a strict Hub-API server on
127.0.0.1 (tests/hub/fake_hub.py) and point HF_ENDPOINT at it. The CLI runs in a
subprocess with the environment a user would have (HF_TOKEN, HF_ENDPOINT). Xet storage is
disabled (HF_HUB_DISABLE_XET=1) because the server speaks the legacy LFS protocol only.

Unverified here: the real Hub's behaviour beyond the routes modelled, Xet uploads, the
Hub's rendering of the card, and the Space build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard, SpaceCard

from evop_hub.hub.push import human_size

from .conftest import FAKE_TOKEN, USER, tree_digest
from .fake_hub import FakeHub

BASE = "meta-org/tiny-base"
LICENSE = b"LLAMA 2 COMMUNITY LICENSE AGREEMENT (test copy)\n"
USE_POLICY = b"Llama 2 Acceptable Use Policy (test copy)\n"


@pytest.fixture
def hub():
    with FakeHub({FAKE_TOKEN: USER, "hf_FAKEother": "someone-else"}) as server:
        # A gated base with license files, like meta-llama/Llama-2-*.
        server.add_repo(
            BASE, {"config.json": b"{}", "LICENSE.txt": LICENSE, "USE_POLICY.md": USE_POLICY}, gated="manual"
        )
        yield server


def run_cli(args, tmp_path, endpoint, token=FAKE_TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf_home"),  # no cached login from the machine
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "evop_hub.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def hub_client(hub, monkeypatch, tmp_path):
    """This process's huggingface_hub pointed at the fake Hub (for downloading back)."""
    from huggingface_hub import constants, hf_api
    from transformers.utils import hub as transformers_hub

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # as the Space's secret would be
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))  # each server's repos are new
    # Clients made before this test read the endpoint when they were made: huggingface_hub's module-level one
    # (transformers resolves revisions through it) and transformers' own, made on first use.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)  # older transformers have none
    return hub


def listed(stdout: str) -> tuple[dict[str, str], dict[str, str]]:
    """A dry run's file rows, name -> size as printed, for the model repo and the Space."""
    sections, rows = [], None
    for line in stdout.splitlines():
        if line.startswith(("dry run:", "and ")):
            rows = {}
            sections.append(rows)
        elif line.startswith("    "):
            name, size = line.split(maxsplit=1)
            rows[name] = size.strip()
    return sections[0], sections[1] if len(sections) > 1 else {}


def test_push_round_trip(make_output, hub_client, tmp_path):
    from transformers import AutoModelForCausalLM

    hub = hub_client
    out = make_output(hub_base=BASE)
    repo_id = f"{USER}/tiny-base-evop-3L"  # the default name: {user}/{model}-evop-{kept}L

    dry = run_cli(["push", str(out), "--dry-run"], tmp_path, hub.url)
    assert dry.returncode == 0, dry.stderr
    dry_model, dry_space = listed(dry.stdout)
    assert ("model", repo_id) not in hub.repos  # a dry run creates nothing

    before = tree_digest(out)
    result = run_cli(["push", str(out)], tmp_path, hub.url)
    assert result.returncode == 0, result.stderr
    assert "gated" in result.stderr and "HF_TOKEN secret" in result.stderr

    # Exactly what the dry run listed, byte-identical to the local files; no run state.
    pushed = hub.files(repo_id)
    assert set(pushed) - {".gitattributes"} == set(dry_model)
    assert all(dry_model[name] == human_size(len(pushed[name])) for name in dry_model)  # each size as sent
    assert not any(p.startswith(".evop") for p in pushed)
    for name, data in pushed.items():
        if name in ("LICENSE.txt", "USE_POLICY.md", ".gitattributes"):
            continue
        assert data == (out / name).read_bytes(), name
    assert pushed["LICENSE.txt"] == LICENSE and pushed["USE_POLICY.md"] == USE_POLICY  # from the gated base
    assert hub.repos[("model", repo_id)].private  # private by default
    # Locally only the card changed (it now names the repo); license files came from the Hub cache.
    after = tree_digest(out)
    assert {k: v for k, v in after.items() if k != "README.md"} == {k: v for k, v in before.items() if k != "README.md"}

    # The safetensors went through LFS (sha256 + size checked by the server), small files inline.
    model_tree = hub.repos[("model", repo_id)].tree("main")[1]
    assert model_tree["model.safetensors"].lfs and not model_tree["config.json"].lfs

    # The card parses back with the Hub's metadata.
    card = ModelCard.load(str(out / "README.md"))
    assert card.data.base_model == BASE and card.data.library_name == "transformers"
    assert "base_model_relation" not in card.data.to_dict()
    assert f'from_pretrained("{repo_id}")' in card.text
    assert "LICENSE.txt" in card.text and "USE_POLICY.md" in card.text

    # The Space: metadata, app files identical to spaces/, and the ids it serves.
    space = hub.files(repo_id, kind="space")
    assert (
        set(space) - {".gitattributes"}
        == set(dry_space)
        == {"README.md", "app.py", "requirements.txt", "evop_space.json"}
    )
    assert all(dry_space[name] == human_size(len(space[name])) for name in dry_space)
    from evop_hub.hub.space import SPACE_DIR

    assert space["app.py"] == (SPACE_DIR / "app.py").read_bytes()
    assert json.loads(space["evop_space.json"])["model"] == repo_id
    assert json.loads(space["evop_space.json"])["base"] == BASE
    space_card = SpaceCard(space["README.md"].decode())
    import gradio

    assert space_card.data.sdk == "gradio" and space_card.data.sdk_version == gradio.__version__
    assert space_card.data.models == [repo_id, BASE]
    assert "HF_TOKEN" in space_card.text  # gated base: the secret is explained

    # The pushed app, run from the pushed files, reads the record and loads the model from the endpoint.
    app_dir = tmp_path / "space"
    app_dir.mkdir()
    for name, data in space.items():
        (app_dir / name).write_bytes(data)
    spec = importlib.util.spec_from_file_location("pushed_space_app", app_dir / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    config = json.loads((app_dir / "evop_space.json").read_text())
    assert app.read_record(config["model"], token=FAKE_TOKEN)["dropped_blocks"] == [1]
    app.build_demo(config["model"], base=None, token=FAKE_TOKEN)  # the fake base has no weights

    # Downloaded back through the same endpoint, the model computes what the local one does.
    remote = AutoModelForCausalLM.from_pretrained(repo_id, token=FAKE_TOKEN, cache_dir=tmp_path / "dl").eval()
    local = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[2, 5, 7, 3, 9, 4]])
    with torch.no_grad():
        assert torch.equal(remote(ids).logits, local(ids).logits)
    assert remote.config.num_hidden_layers == 3

    # The token appears nowhere: output, pushed files, local files.
    blobs = [dry.stdout, dry.stderr, result.stdout, result.stderr]
    blobs += [d.decode(errors="replace") for d in (*pushed.values(), *space.values())]
    blobs += [p.read_bytes().decode(errors="replace") for p in out.rglob("*") if p.is_file()]
    assert not any(FAKE_TOKEN in b for b in blobs)
    assert not any(method != "HEAD" for method, *_ in hub.rejected), hub.rejected  # only probes may 404

    # A new evaluation, pushed to a new branch: accepted (repos exist), only changed files sent.
    uploads = sum(method == "PUT" for method, *_ in hub.requests)
    record = json.loads((out / "evop_pruning.json").read_text())
    record["scores"]["perplexity"]["wikitext2:test"]["pruned"] = 24.0
    (out / "evop_pruning.json").write_text(json.dumps(record))
    # With --debug the libraries log every request: the token must still not show.
    again = run_cli(
        ["--debug", "push", str(out), "--no-space", "--revision", "v2", "--commit-message", "second look"],
        tmp_path,
        hub.url,
    )
    assert again.returncode == 0, again.stderr
    v2, main = hub.files(repo_id, revision="v2"), hub.files(repo_id)
    assert json.loads(v2["evop_pruning.json"])["scores"]["perplexity"]["wikitext2:test"]["pruned"] == 24.0
    assert main["evop_pruning.json"] == pushed["evop_pruning.json"]  # main untouched
    assert v2["model.safetensors"] == main["model.safetensors"]
    assert sum(method == "PUT" for method, *_ in hub.requests) == uploads  # the weights were not re-sent
    assert hub.repos[("model", repo_id)].messages[-1] == "second look"
    assert FAKE_TOKEN not in again.stdout + again.stderr
    # The card on the branch loads the branch: `main` holds the other evaluation.
    assert f"from_pretrained(\"{repo_id}\", revision='v2')" in v2["README.md"].decode()


def test_a_dry_run_needs_no_network_even_with_a_token(make_output, tmp_path):
    """With a token set and --repo-id naming the namespace, the account is not asked for: a dead endpoint
    (nothing listens on port 9) does not matter. Offline without a namespace, the user is a placeholder."""
    out = make_output()
    named = run_cli(["push", str(out), "--dry-run", "--repo-id", f"{USER}/named"], tmp_path, "http://127.0.0.1:9")
    assert named.returncode == 0, named.stderr
    assert named.stdout.splitlines()[0].endswith(f"to the private model repo {USER}/named")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": FAKE_TOKEN, "HF_HOME": str(tmp_path / "hf_home")}
    unnamed = subprocess.run(
        [sys.executable, "-m", "evop_hub.cli", "push", str(out), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert unnamed.returncode == 0, unnamed.stderr
    assert " model repo {your-user}/" in unnamed.stdout.splitlines()[0]


def test_a_dry_run_shows_sizes_urls_visibility_and_hardware(make_output, tmp_path):
    """What a user checks before sending: how much, to which pages, seen by whom, on which Space hardware."""
    from evop_hub.hub import PushConfig, push

    out = make_output()
    hub = "http://127.0.0.1:9"  # nothing listens: a dry run with a named repo asks the Hub nothing
    repo = f"{USER}/named"
    sizes = push(out, PushConfig(repo_id=repo, dry_run=True)).sizes
    assert {name: sizes[name] for name in sizes if name != "README.md"} == {
        p.name: p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "README.md"
    }
    default = run_cli(["push", str(out), "--dry-run", "--repo-id", repo], tmp_path, hub)
    assert default.returncode == 0, default.stderr
    lines = default.stdout.splitlines()
    total = human_size(sum(sizes.values()))
    assert lines[:2] == [
        f"dry run: would upload {len(sizes)} files ({total}) to the private model repo {repo}",
        f"  {hub}/{repo}",
    ]
    model, space = listed(default.stdout)
    assert model == {name: human_size(size) for name, size in sizes.items()}
    space_line = next(line for line in lines if line.startswith("and "))
    assert space_line.startswith(f"and {len(space)} files (")
    assert space_line.endswith(f"to the private Space {repo}, hardware cpu-basic (free)")
    assert lines[lines.index(space_line) + 1] == f"  {hub}/spaces/{repo}"
    assert set(space) == {"README.md", "app.py", "requirements.txt", "evop_space.json"}

    public = run_cli(
        [
            "push",
            str(out),
            "--dry-run",
            "--repo-id",
            repo,
            "--public",
            "--revision",
            "v2",
            "--space-hardware",
            "t4-small",
        ],
        tmp_path,
        hub,
    )
    assert public.returncode == 0, public.stderr
    lines = public.stdout.splitlines()
    assert lines[0].endswith(f"to the public model repo {repo}") and lines[1] == f"  {hub}/{repo}/tree/v2"
    assert any(line.endswith(f"to the public Space {repo}, hardware t4-small") for line in lines)


@pytest.mark.parametrize(
    "case",
    ["no-token", "bad-token", "other-namespace", "invalid-repo-id", "no-network", "not-an-output"],
)
def test_push_failures_are_one_line_and_change_nothing(case, make_output, hub, tmp_path):
    out = make_output(hub_base=BASE)
    args, token, endpoint = ["push", str(out)], FAKE_TOKEN, hub.url
    expected = {
        "no-token": "no Hugging Face token",
        "bad-token": "rejected the token",
        "other-namespace": "no permission",
        "invalid-repo-id": "invalid repo id",
        "no-network": "cannot reach the Hugging Face Hub",
        "not-an-output": "is not an evop-hub output",
    }[case]
    if case == "no-token":
        token = None
    elif case == "bad-token":
        token = "hf_FAKEwrongtoken000"
    elif case == "other-namespace":
        args += ["--repo-id", "someone-else/stolen"]
    elif case == "invalid-repo-id":
        args += ["--repo-id", "me/bad name!"]
    elif case == "no-network":
        endpoint = "http://127.0.0.1:9"  # discard port: connection refused
    elif case == "not-an-output":
        args = ["push", str(tmp_path / "base")]
    before = (tree_digest(out), tree_digest(tmp_path / "base"))
    result = run_cli(args, tmp_path, endpoint, token=token)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert (token or FAKE_TOKEN) not in result.stderr + result.stdout
    assert (tree_digest(out), tree_digest(tmp_path / "base")) == before
    assert not [r for r in hub.repos if r[1] != BASE]  # nothing was created


def test_space_hardware_warning(make_output, tmp_path):
    """A 7B pruned from 13B in bf16 does not fit the free 16 GB CPU Space; --space-hardware silences it."""
    from evop_hub.hub.space import space_files
    from evop_hub.record import PruningRecord

    out = make_output()
    record = PruningRecord.load(out)
    record.parameters_before, record.parameters_after = 13_000_000_000, 7_000_000_000
    record.source_hub_id = BASE
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config))
    free = space_files(out, record, f"{USER}/big", private=False)
    assert free.memory_gb == pytest.approx(20e9 * 2 / 1e9 + 2.0)
    assert any("--space-hardware" in w for w in free.warnings)
    assert "--space-hardware" in free.files["README.md"].decode()
    paid = space_files(out, record, f"{USER}/big", private=False, hardware="cpu-upgrade")
    assert not paid.warnings
    small = space_files(out, PruningRecord.load(out), f"{USER}/small", private=False)
    assert not small.warnings  # the tiny model fits, and a public repo needs no secret
    record.source_format = "gguf:Q4_1"  # dequantized from a GGUF file, compared with the full-precision base
    readme = space_files(out, record, f"{USER}/big", private=False, hardware="cpu-upgrade").files["README.md"].decode()
    assert f"dequantized from a Q4_1 GGUF file, while {BASE} is served in full precision" in readme


def test_nothing_outside_the_output_dir_is_uploaded(make_output, tmp_path):
    """Run state and partial writes are skipped; a link leading outside stops the push."""
    from evop_hub.errors import EvopError
    from evop_hub.hub.push import upload_files

    out = make_output()
    written = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "README.md")
    (out / "model.safetensors.tmp").write_bytes(b"partial")
    assert upload_files(out) == (written, ["model.safetensors.tmp"])
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the model")
    (out / "config.json").unlink()
    (out / "config.json").symlink_to(secret)
    with pytest.raises(EvopError, match="links outside the output directory"):
        upload_files(out)


@pytest.mark.parametrize("manifest", [True, False], ids=["saved-here", "a-clone-without-.evop"])
def test_push_uploads_only_what_evop_hub_wrote(manifest, make_output, hub_client, tmp_path):
    """21.5: a user's .env, notes and a clone's .git stay local, and one line names what was left out; a clone
    (no .evop, so no list of the last save's files) is judged by the names of a checkpoint's files."""
    out = make_output(hub_base=BASE)
    written = {p.name for p in out.iterdir() if p.is_file()}
    if not manifest:
        shutil.rmtree(out / ".evop")
    (out / ".env").write_text("HF_TOKEN=hf_private\n")
    (out / "NOTES.md").write_text("my notes\n")
    (out / ".git").mkdir()
    (out / ".git" / "config").write_text("[core]\n")
    result = run_cli(["push", str(out), "--repo-id", f"{USER}/only-ours", "--no-space"], tmp_path, hub_client.url)
    assert result.returncode == 0, result.stderr
    pushed = set(hub_client.files(f"{USER}/only-ours")) - {".gitattributes", "LICENSE.txt", "USE_POLICY.md"}
    assert pushed == written
    assert "not uploaded (evop-hub did not write them): .env, .git/, NOTES.md" in result.stderr.splitlines()


def test_check_push_fails_before_any_work(hub_client, monkeypatch):
    """`prune --push` calls check_push first, so a bad token or repo id costs seconds, not a search."""
    from evop_hub.errors import EvopError
    from evop_hub.hub import PushConfig, check_push

    check_push(PushConfig())  # HF_TOKEN (set by hub_client) is accepted
    check_push(PushConfig(repo_id="just-a-name"))
    with pytest.raises(EvopError, match="rejected the token"):
        check_push(PushConfig(token="hf_FAKEwrongtoken000"))
    with pytest.raises(EvopError, match="rejected the token"):  # also when --repo-id names the namespace
        check_push(PushConfig(repo_id="someone/model", token="hf_FAKEwrongtoken000"))
    with pytest.raises(EvopError, match="invalid repo id"):
        check_push(PushConfig(repo_id="me/bad name!"))
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", "/nonexistent-evop-test-home")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent-evop-test-home/token")
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", "/nonexistent-evop-test-home/stored_tokens")
    with pytest.raises(EvopError, match="no Hugging Face token"):
        check_push(PushConfig())
    assert not [r for r in hub_client.repos if r[1] != BASE]  # checks create nothing


@pytest.mark.parametrize("license_file", [True, False])
def test_a_license_of_type_other_keeps_its_name_and_link(hub_client, tmp_path, license_file):
    """Many bases state their terms as `license: other` with a name and a link (Qwen, Yi, Falcon...):
    loaded from the (fake) Hub, the pruned model's card carries all three, and the link resolves from the
    new repo: to the copied file, or into the base repo when there is no file to copy."""
    import evop_hub

    from .conftest import tiny_llama, tiny_tokenizer

    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    files = {p.name: p.read_bytes() for p in base_dir.iterdir()}
    files["README.md"] = (
        b"---\nlicense: other\nlicense_name: tiny-community-license\nlicense_link: LICENSE\n---\n# tiny\n"
    )
    if license_file:
        files["LICENSE"] = b"TINY COMMUNITY LICENSE (test copy)\n"
    hub_client.add_repo("org/other-base", files)

    loaded = evop_hub.load("org/other-base")
    record = loaded.record
    assert (record.license, record.license_name, record.license_link) == ("other", "tiny-community-license", "LICENSE")
    assert record.source_revision == hub_client.repos[("model", "org/other-base")].branches["main"]  # pinned
    if license_file:  # offline, from the cache: the same commit (the license keys need the Hub, so they are absent)
        from huggingface_hub import constants

        with pytest.MonkeyPatch.context() as offline:
            offline.setattr(constants, "HF_HUB_OFFLINE", True)
            assert evop_hub.load("org/other-base").record.source_revision == record.source_revision
    evop_hub.drop(loaded, [1])
    out = evop_hub.save(loaded, tmp_path / "out")
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "other" and card.data.license_name == "tiny-community-license"
    if license_file:
        assert card.data.license_link == "LICENSE" and (out / "LICENSE").read_bytes() == files["LICENSE"]
    else:
        assert not (out / "LICENSE").exists()
        assert card.data.license_link == f"https://huggingface.co/org/other-base/blob/{record.source_revision}/LICENSE"
        assert f"[The license]({card.data.license_link})" in card.text

    from evop_hub.hub.space import space_files

    space = space_files(out, record, f"{USER}/other-evop")
    meta = SpaceCard(space.files["README.md"].decode()).data
    assert (meta.license, meta.license_name) == ("other", "tiny-community-license")
    assert meta.license_link == f"https://huggingface.co/org/other-base/blob/{record.source_revision}/LICENSE"
