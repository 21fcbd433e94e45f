"""The Hugging Face Hub: push runs and pull repos.

- :func:`push` uploads the publishable files of a run or export (see :mod:`zoo.weights.files`) to a
  Hub repo in one commit, creating the repo if needed. An unchanged re-push makes no commit:
  the Hub reports the files it already has and ``huggingface_hub`` drops them.
- :func:`pull` downloads a repo into the standard ``huggingface_hub`` cache, checks every file
  against the sha256 (LFS) or git blob sha1 the Hub reports, and returns the snapshot path.
  With ``HF_HUB_OFFLINE=1`` cached repos load without any request.
- ``zoo.create("hf-hub:org/repo[@rev]")`` pulls through :func:`pull`
  (:mod:`zoo.weights.factory`).

Tokens, the endpoint (``HF_ENDPOINT``) and the cache (``HF_HOME``/``HF_HUB_CACHE``) are
``huggingface_hub``'s: zoo never reads, logs or writes a token itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._fs import check_regular
from zoo.errors import HubError
from zoo.runs.lock import check_unlocked
from zoo.weights import files as export

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo
    from huggingface_hub.hf_api import RepoSibling

__all__ = ["HUB_PREFIX", "HubSource", "parse_source", "pull", "push"]

HUB_PREFIX = "hf-hub:"
MODEL_FILES = (export.CONFIG_NAME, export.WEIGHTS_NAME)
# Branches, tags and commit shas; no "..", no leading "/" (revisions become cache paths).
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9._\-]+)*")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_source(text: str) -> HubSource:
    """Parse ``hf-hub:org/repo[@revision]`` (the prefix is optional)."""
    body = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
    repo_id, _, revision = body.partition("@")
    return HubSource(validate_repo_id(repo_id), validate_revision(revision or None))


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid ``ORG/NAME`` Hub model repo id, else raise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise HubError(f"invalid Hub repo id {repo_id!r}: expected ORG/NAME, e.g. me/mixer-p4")
    try:
        hf_validate(repo_id)
    except HFValidationError as e:
        raise HubError(f"invalid Hub repo id {repo_id!r}: {_one_line(e)}") from None
    return repo_id


def validate_revision(revision: str | None) -> str | None:
    if revision is None:
        return None
    if not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith(".lock"):
        raise HubError(
            f"invalid Hub revision {revision!r}: use a branch, tag or commit sha "
            "(letters, digits, . _ - and /, no '..')"
        )
    return revision


# -- push ----------------------------------------------------------------------------------


def push(
    path: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload the publishable files of a run or export directory to ``repo_id`` in one
    commit; return the commit's URL (it ends with the commit sha).

    The repo is created if needed (``private`` applies only then). The weights are checked
    (rebuilt and strictly loaded) before anything is uploaded. ``token`` defaults to
    huggingface_hub's (``HF_TOKEN``, then the ``hf auth login`` token).
    """
    info = push_commit(
        path,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        token=token,
    )
    return str(info.commit_url)


def push_commit(
    path: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> CommitInfo:
    """:func:`push`, returning huggingface_hub's ``CommitInfo`` (``.oid`` is the sha)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from zoo.runs import card

    validate_repo_id(repo_id)
    validate_revision(revision)
    directory = Path(path)
    if not directory.is_dir():
        raise HubError(f"cannot push {directory}: not a directory (give a run or export directory)")
    check_unlocked(directory, "push")  # a run being trained: its files are in flux
    export.check_finished(directory, "push")
    config = export.read_config(directory)
    export.load_model_dir(directory)  # never publish weights that do not load
    operations = [  # the real files, checked: never a link out of the directory or a FIFO
        CommitOperationAdd(
            path_in_repo=name,
            path_or_fileobj=str(
                check_regular(directory / name, error=HubError, verb="push", single_link=True)
            ),
        )
        for name in export.publishable_files(directory)
    ]
    readme = card.card_text(directory, repo_id=repo_id).encode("utf-8")
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme))
    message = commit_message or f"Upload {export.architecture_of(config)} trained with zoo"
    api = HfApi(token=token)
    with _hub_errors("push to", repo_id, revision):
        api.create_repo(repo_id, private=private or None, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    _log.info("pushed %d files from %s to %s: %s", len(operations), directory, repo_id, info)
    return info


# -- pull ----------------------------------------------------------------------------------


def pull(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Download ``repo_id`` (``org/repo`` or ``hf-hub:org/repo[@rev]``) into the
    huggingface_hub cache and return the snapshot directory.

    Online, the repo must hold ``config.json`` and ``model.safetensors``, and every
    downloaded file is checked against the hash the Hub reports (a file that does not match
    is removed from the cache). With ``HF_HUB_OFFLINE=1`` the cached snapshot is returned.
    """
    from huggingface_hub import HfApi, constants, snapshot_download

    source = parse_source(repo_id)
    repo_id, revision = source.repo_id, validate_revision(revision) or source.revision
    with _hub_errors("download", repo_id, revision):
        if constants.is_offline_mode():
            return Path(
                snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns)
            )
        try:
            info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
        except Exception as e:
            if not _is_network_error(e):
                raise
            # Like huggingface_hub itself: a Hub that cannot be reached falls back to the
            # cache (the snapshot there was verified when it was downloaded).
            _log.warning(
                "cannot reach the Hub (%s); using the cached %s", type(e).__name__, repo_id
            )
            cached = snapshot_download(
                repo_id, revision=revision, allow_patterns=allow_patterns, local_files_only=True
            )
            return Path(cached)
        siblings = {s.rfilename: s for s in info.siblings or []}
        _check_listing(repo_id, info.sha, siblings)
        path = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=allow_patterns, token=token
            )
        )
    if path.name != info.sha:
        raise HubError(
            f"{repo_id}@{revision or 'main'} changed while it was downloading "
            f"({info.sha} -> {path.name}); run the command again"
        )
    _verify_snapshot(repo_id, path, siblings)
    return path


def _check_listing(repo_id: str, sha: str | None, siblings: Mapping[str, Any]) -> None:
    """Refuse a repo before downloading anything if it lacks the model files or names a
    file that would land outside the snapshot directory."""
    for name in siblings:
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ".." in parts or "" in parts:
            raise HubError(
                f"Hub repo {repo_id} lists the file name {name!r}, which would escape the "
                "download directory; refusing to download it"
            )
    missing = [name for name in MODEL_FILES if name not in siblings]
    if missing:
        raise HubError(
            f"Hub repo {repo_id} (commit {sha}) has no {' or '.join(missing)}; it holds "
            f"{', '.join(sorted(siblings)) or 'no files'}. Push a zoo run with `zoo push RUN "
            f"{repo_id}`"
        )


def _verify_snapshot(repo_id: str, path: Path, siblings: Mapping[str, RepoSibling]) -> None:
    """Check each downloaded file against the sha256 (LFS) or git blob sha1 the Hub
    reported; remove a file that does not match from the cache so a retry downloads it."""
    for name, sibling in siblings.items():
        local = path / name
        if not local.is_file():
            continue  # not downloaded (allow_patterns)
        data = local.read_bytes()
        if sibling.lfs is not None:
            algorithm, expected = "sha256", sibling.lfs.sha256
            actual = hashlib.sha256(data).hexdigest()
        elif sibling.blob_id is not None:
            algorithm, expected = "git blob sha1", sibling.blob_id
            actual = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        else:
            _log.warning("the Hub reported no hash for %s in %s; not verified", name, repo_id)
            continue
        if actual != expected:
            blob = local.resolve()
            local.unlink()
            blob.unlink(missing_ok=True)
            raise HubError(
                f"{name} downloaded from {repo_id} does not match the {algorithm} the Hub "
                f"reports (expected {expected}, got {actual}); it was removed from the cache. "
                "Run the command again; if it persists the file is corrupted on the server"
            )


# -- errors --------------------------------------------------------------------------------


@contextlib.contextmanager
def _hub_errors(action: str, repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's and the network's exceptions into one-line HubErrors."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    where = f"{repo_id}@{revision}" if revision else repo_id
    endpoint = constants.ENDPOINT
    try:
        yield
    except hf.RevisionNotFoundError:
        raise HubError(
            f"revision {revision or 'main'!r} does not exist in Hub repo {repo_id} at {endpoint}; "
            "use a branch, tag or commit sha that exists"
        ) from None
    except hf.RepositoryNotFoundError:
        raise HubError(
            f"Hub repo {repo_id} was not found at {endpoint} (or it is private and your token "
            "cannot read it); check the name, or log in with `hf auth login` or set HF_TOKEN"
        ) from None
    except hf.RemoteEntryNotFoundError as e:
        raise HubError(f"a file is missing from Hub repo {where}: {_one_line(e)}") from None
    except hf.LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else ""
        raise HubError(
            f"{where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the "
            f"Hub cannot be reached{offline}; run `zoo pull {repo_id}` while online first"
        ) from None
    except hf.OfflineModeIsEnabled:
        raise HubError(
            f"cannot {action} {where}: HF_HUB_OFFLINE is set; unset it to reach the Hub"
        ) from None
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            raise HubError(
                f"the Hub at {endpoint} refused to let you {action} {where} (HTTP {status}): "
                "your token is missing or lacks access; set HF_TOKEN or run `hf auth login`"
            ) from None
        detail = _one_line(e.server_message or f"HTTP {status}")
        raise HubError(f"the Hub failed to {action} {where} ({detail})") from None
    except ValueError as e:  # e.g. README metadata the Hub rejects
        raise HubError(f"cannot {action} {where}: {_one_line(e)}") from None
    except Exception as e:
        if not _is_network_error(e):
            raise
        offline = "" if action == "push to" else ", or set HF_HUB_OFFLINE=1 to use cached models"
        raise HubError(
            f"cannot reach the Hub at {endpoint} to {action} {where} ({type(e).__name__}); check "
            f"your connection or HF_ENDPOINT{offline}"
        ) from None


def _is_network_error(e: BaseException) -> bool:
    # huggingface_hub's HTTP stack (httpx2, httpx or requests by version) raises its own
    # transport errors; they all live in those modules or are ConnectionError/TimeoutError.
    top = type(e).__module__.split(".")[0]
    return isinstance(e, ConnectionError | TimeoutError) or top in ("httpx2", "httpx", "requests")


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())
