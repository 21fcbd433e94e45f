"""zoo.weights.hub against a Hub-compatible test server, driven by the real huggingface_hub
client."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hub_server import FakeHub
from huggingface_hub import HfApi
from publish_helpers import TINY, TOKEN, hf_env, make_run, point_client_at, sample_input
from safetensors.torch import load_file, save_file

import zoo
from zoo.cli import cli
from zoo.errors import HubError, WeightsError
from zoo.weights import hub, store

REPO = "me/tiny"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub(token=TOKEN).start(lifetime=120)
    point_client_at(monkeypatch, fake.url, tmp_path / "hf")
    yield fake
    fake.stop()


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    return make_run(tmp_path / "runs" / "tiny" / "1")


def _fresh_cache(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))


def _upload_raw(server: FakeHub, repo: str, files: dict[str, bytes]) -> None:
    """Put files on the server bypassing zoo's checks (what a careless or hostile uploader
    could publish)."""
    from huggingface_hub import CommitOperationAdd

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=v) for k, v in files.items()]
    api.create_commit(repo, ops, commit_message="raw upload")


# -- push and pull ---------------------------------------------------------------------------


def test_push_then_pull_gives_the_same_tensors(server: FakeHub, run, tmp_path, monkeypatch):
    run_dir, net = run
    url = hub.push(run_dir, REPO)
    assert url == f"{server.url}/{REPO}/commit/{server.head(REPO)}"
    remote = server.files(REPO)
    assert {"model.safetensors", "config.json", "README.md", "recipe.yaml"} <= set(remote)
    assert not any(name.startswith("checkpoints") for name in remote)
    assert f"Bearer {TOKEN}" in server.state.authorizations  # the token was used, not stored

    _fresh_cache(monkeypatch, tmp_path / "fresh-cache")
    path = hub.pull(REPO)
    assert path.name == server.head(REPO)
    assert str(path).startswith(str(tmp_path / "fresh-cache"))
    pulled = load_file(path / "model.safetensors")
    for key, tensor in net.state_dict().items():
        assert torch.equal(pulled[key], tensor), key
    readme = (path / "README.md").read_text()
    assert f'zoo.create("hf-hub:{REPO}")' in readme
    assert readme.startswith("---\n") and "library_name: zoo" in readme


def test_create_from_hub_matches_the_original_model(server: FakeHub, run):
    run_dir, net = run
    hub.push(run_dir, REPO)
    x = sample_input()
    model = zoo.create(f"hf-hub:{REPO}").eval()
    assert torch.equal(model(x), net(x))
    assert model.zoo_cfg["weights"] == f"hf-hub:{REPO}"
    by_name = zoo.create("mlp_relu", pretrained=f"hf-hub:{REPO}", **TINY).eval()
    assert torch.equal(by_name(x), net(x))
    at_commit = zoo.create(f"hf-hub:{REPO}@{server.head(REPO)}").eval()
    assert torch.equal(at_commit(x), net(x))


def test_unchanged_repush_makes_no_new_commit(server: FakeHub, run):
    run_dir, _ = run
    first = hub.push(run_dir, REPO)
    commits = server.state.commits_made
    assert hub.push(run_dir, REPO) == first
    assert server.state.commits_made == commits
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n')
    second = hub.push(run_dir, REPO, commit_message="more epochs")
    assert second != first and server.state.commits_made == commits + 1


def test_push_to_a_branch_and_pull_it(server: FakeHub, run):
    run_dir, _ = run
    hub.push(run_dir, REPO)
    hub.push(run_dir, REPO, revision="v2", commit_message="on a branch")
    assert server.head(REPO, "v2")
    assert hub.pull(REPO, "v2").name == server.head(REPO, "v2")


# huggingface_hub's LFS PUT passes a file object as data=, which httpx2 deprecates.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_lfs_upload_and_download(tmp_path, monkeypatch, run):
    """Large files through the LFS batch API and a CDN redirect (Xet disabled)."""
    from huggingface_hub import constants

    fake = FakeHub(lfs_mode=True, token=TOKEN).start(lifetime=120)
    try:
        point_client_at(monkeypatch, fake.url, tmp_path / "hf")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        run_dir, net = run
        hub.push(run_dir, REPO)
        weights = (run_dir / "model.safetensors").read_bytes()
        assert weights in fake.state.lfs_objects.values()
        assert (run_dir / "config.json").read_bytes() not in fake.state.lfs_objects.values()
        x = sample_input()
        assert torch.equal(zoo.create(f"hf-hub:{REPO}").eval()(x), net(x))
        assert any(r.startswith("GET /lfs-objects/") for r in fake.state.requests)
        commits = fake.state.commits_made
        hub.push(run_dir, REPO)
        assert fake.state.commits_made == commits

        fake.state.corrupt.add((REPO, "model.safetensors"))
        _fresh_cache(monkeypatch, tmp_path / "fresh-cache")
        with pytest.raises(HubError, match=r"model.safetensors .* does not match the sha256"):
            hub.pull(REPO)
    finally:
        fake.stop()


# -- failures --------------------------------------------------------------------------------


def test_missing_repo(server: FakeHub):
    with pytest.raises(HubError, match=r"Hub repo me/nothing was not found at http://127"):
        zoo.create("hf-hub:me/nothing")


def test_missing_revision(server: FakeHub, run):
    hub.push(run[0], REPO)
    with pytest.raises(HubError, match=r"revision 'nope' does not exist in Hub repo me/tiny"):
        zoo.create(f"hf-hub:{REPO}@nope")


def test_missing_model_files(server: FakeHub):
    HfApi().create_repo("me/empty")
    with pytest.raises(HubError, match=r"has no config.json or model.safetensors; it holds"):
        hub.pull("me/empty")
    _upload_raw(server, "me/noweights", {"config.json": b"{}"})
    with pytest.raises(HubError, match=r"has no model.safetensors"):
        zoo.create("hf-hub:me/noweights")


@pytest.mark.parametrize(
    "repo_id",
    ["noslash", "a/b/c", "../etc", "me/../x", "me/a b", "me/" + "x" * 100, "me/--x", ""],
)
def test_invalid_repo_ids(repo_id: str, tmp_path: Path):
    with pytest.raises(HubError, match="invalid Hub repo id"):
        hub.pull(repo_id)
    with pytest.raises(HubError, match="invalid Hub repo id"):
        hub.push(tmp_path, repo_id)


@pytest.mark.parametrize("revision", ["../../etc", "/abs", "a b", "x..y", "main.lock"])
def test_invalid_revisions(revision: str):
    with pytest.raises(HubError, match="invalid Hub revision"):
        hub.pull(REPO, revision)


def test_architecture_not_installed_names_the_distribution(server: FakeHub, run):
    config = json.loads((run[0] / "config.json").read_text())
    config.update(architecture="fancynet_xl", distribution="zoo-fancynet")
    weights = (run[0] / "model.safetensors").read_bytes()
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": weights}
    _upload_raw(server, "me/fancy", files)
    with pytest.raises(WeightsError, match=r"'fancynet_xl'.*pip install zoo-fancynet"):
        zoo.create("hf-hub:me/fancy")


def test_weights_that_do_not_fit(server: FakeHub, run, tmp_path):
    other, _ = make_run(tmp_path / "other", args={**TINY, "hidden_sizes": [5]})
    files = {
        "config.json": (run[0] / "config.json").read_bytes(),
        "model.safetensors": (other / "model.safetensors").read_bytes(),
    }
    _upload_raw(server, "me/misfit", files)
    with pytest.raises(
        WeightsError,
        match=r"shape mismatch: .*features.1.weight: weights \(5, 16\) vs model \(8, 16\)",
    ):
        zoo.create("hf-hub:me/misfit")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_weights_on_the_hub(server: FakeHub, run, damage: str):
    weights = (run[0] / "model.safetensors").read_bytes()
    bad = weights[: len(weights) // 2] if damage == "truncated" else b"\x07" * 64
    files = {"config.json": (run[0] / "config.json").read_bytes(), "model.safetensors": bad}
    _upload_raw(server, "me/broken", files)
    with pytest.raises(WeightsError, match="is corrupted or truncated"):
        zoo.create("hf-hub:me/broken")


def test_num_classes_that_disagree_with_the_weights(server: FakeHub, run):
    hub.push(run[0], REPO)
    model = zoo.create(f"hf-hub:{REPO}", num_classes=5)  # fine-tuning: a fresh 5-class head
    assert model.zoo_cfg["pretrained"]["reinitialised"] == ["head.bias", "head.weight"]
    assert model.zoo_cfg["pretrained"]["source"] == f"hf-hub:{REPO}"


def test_wrong_architecture_for_pretrained_source(server: FakeHub, run):
    hub.push(run[0], REPO)
    with pytest.raises(WeightsError, match=r"holds weights for 'mlp_relu', not 'mlp_tanh'"):
        zoo.create("mlp_tanh", pretrained=f"hf-hub:{REPO}")


def test_tampered_download_is_refused_and_removed(server: FakeHub, run, tmp_path, monkeypatch):
    hub.push(run[0], REPO)
    server.state.corrupt.add((REPO, "config.json"))
    with pytest.raises(HubError, match=r"config.json .* does not match the git blob sha1"):
        zoo.create(f"hf-hub:{REPO}")
    server.state.corrupt.clear()
    assert zoo.create(f"hf-hub:{REPO}")  # the bad file left the cache: a retry heals


def test_file_names_that_escape_the_snapshot_are_refused(server: FakeHub, run):
    hub.push(run[0], REPO)
    server.state.extra_siblings[REPO] = ["../../outside.txt"]
    with pytest.raises(HubError, match=r"'../../outside.txt', which would escape"):
        hub.pull(REPO)


def test_wrong_token_is_refused_without_echoing_it(server: FakeHub, run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongWrongWrong")
    with pytest.raises(HubError, match=r"refused .* \(HTTP 401\).*set HF_TOKEN") as info:
        hub.push(run[0], REPO)
    assert "hf_wrong" not in str(info.value)


def test_push_refuses_weights_that_do_not_load(server: FakeHub, run):
    (run[0] / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(WeightsError, match="corrupted or truncated"):
        hub.push(run[0], REPO)
    assert REPO not in server.state.repos  # nothing was created or uploaded


def test_offline_without_cache(server: FakeHub, run, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        zoo.create(f"hf-hub:{REPO}")
    with pytest.raises(HubError, match=r"HF_HUB_OFFLINE is set"):
        hub.push(run[0], REPO)


def test_unreachable_hub_falls_back_to_the_cache(server: FakeHub, run):
    hub.push(run[0], REPO)
    x = sample_input()
    expected = zoo.create(f"hf-hub:{REPO}").eval()(x)
    server.stop()  # nothing listens there any more
    assert torch.equal(zoo.create(f"hf-hub:{REPO}").eval()(x), expected)
    with pytest.raises(HubError, match=r"me/other is not in the local Hugging Face cache"):
        hub.pull("me/other")
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127.* to push to"):
        hub.push(run[0], REPO)


# -- secrets, tags, CLI ------------------------------------------------------------------------


def test_token_never_reaches_files_or_logs(server: FakeHub, run, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    result = runner.invoke(cli, ["-vv", "push", str(run[0]), REPO])
    assert result.exit_code == 0, result.output
    result_pull = runner.invoke(cli, ["-vv", "pull", REPO])
    assert result_pull.exit_code == 0, result_pull.output
    runner.invoke(cli, ["export", str(run[0]), "--out", str(tmp_path / "export")])
    assert f"Bearer {TOKEN}" in server.state.authorizations
    captured = capfd.readouterr()
    for text in (result.output, result_pull.output, caplog.text, captured.out, captured.err):
        assert TOKEN not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_cli_push_pull_and_errors(server: FakeHub, run):
    runner = CliRunner()
    pushed = runner.invoke(cli, ["push", str(run[0]), REPO, "--private", "--commit-message", "a"])
    assert pushed.exit_code == 0 and pushed.stdout.strip().endswith(server.head(REPO))
    assert server.state.repos[REPO].private
    pulled = runner.invoke(cli, ["pull", f"hf-hub:{REPO}"])
    assert pulled.exit_code == 0 and Path(pulled.stdout.strip(), "model.safetensors").is_file()
    missing = runner.invoke(cli, ["pull", "me/nothing"])
    assert missing.exit_code == 2
    assert missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("error: Hub repo me/nothing was not found")


def test_publish_tag_pointing_at_the_hub(server: FakeHub, run):
    run_dir, net = run
    result = CliRunner().invoke(cli, ["publish", str(run_dir), "--tag", "hubbed", "--hub", REPO])
    assert result.exit_code == 0, result.output
    pointer = json.loads((store.weights_dir("mlp_relu") / "hubbed.json").read_text())
    assert pointer == {"source": f"hf-hub:{REPO}@{server.head(REPO)}"}
    x = sample_input()
    assert torch.equal(zoo.create("mlp_relu.hubbed").eval()(x), net(x))
    commits = server.state.commits_made
    again = CliRunner().invoke(cli, ["publish", str(run_dir), "--tag", "hubbed", "--hub", "me/b"])
    assert again.exit_code == 2 and "already published" in again.stderr
    assert server.state.commits_made == commits and "me/b" not in server.state.repos


@pytest.mark.slow  # imports timm and builds a timm model (seconds)
def test_timm_interop_round_trip(server: FakeHub, tmp_path):
    pytest.importorskip("zoo_timm", reason="the zoo-timm plugin is not installed")
    timm = pytest.importorskip("timm")
    args = {"num_classes": 3, "in_chans": 1, "img_size": 16}
    run_dir, net = make_run(tmp_path / "timm-run", "timm/test_resnet", args)
    hub.push(run_dir, "me/timm-tiny")
    x = sample_input(args=args)
    via_timm = timm.create_model("hf-hub:me/timm-tiny", pretrained=True).eval()
    assert torch.equal(via_timm(x), net(x))
    assert torch.equal(zoo.create("hf-hub:me/timm-tiny").eval()(x), net(x))


# -- fresh processes -----------------------------------------------------------------------------

_CHECK = """
import sys, torch, zoo
from safetensors.torch import load_file
ref = load_file(sys.argv[2])
model = zoo.create(sys.argv[1]).eval()
# ref["y"] was computed in the pytest process: another process may pick other kernels or
# thread splits (it differs by 1 ulp on AMD EPYC), so compare with float32's default
# tolerance (rtol 1.3e-6, atol 1e-5); a wrong or misloaded weight moves outputs by ~1e-1.
torch.testing.assert_close(model(ref["x"]), ref["y"])
print("ok")
"""


def _run_check(source: str, ref: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHECK, source, str(ref)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_fresh_process_with_empty_cache_then_offline(server: FakeHub, run, tmp_path):
    run_dir, net = run
    hub.push(run_dir, REPO)
    x = sample_input()
    ref = tmp_path / "reference.safetensors"
    save_file({"x": x, "y": net(x).detach()}, ref)
    home = tmp_path / "fresh-home"
    online = _run_check(f"hf-hub:{REPO}", ref, hf_env(server.url, home))
    assert online.returncode == 0 and "ok" in online.stdout, online.stderr
    assert (home / "hub" / "models--me--tiny").is_dir()

    requests = len(server.state.requests)
    offline = _run_check(f"hf-hub:{REPO}", ref, hf_env(server.url, home, HF_HUB_OFFLINE="1"))
    assert offline.returncode == 0 and "ok" in offline.stdout, offline.stderr
    assert len(server.state.requests) == requests  # not one request: it came from the cache
    for proc in (online, offline):
        assert TOKEN not in proc.stdout + proc.stderr
