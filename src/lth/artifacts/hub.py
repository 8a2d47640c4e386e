"""`lth push`: an export to the Hugging Face Hub, exactly the files `lth inspect` verifies, with the model card at
the repository's root; and a ticket read from the Hub where a path is expected (`lth.apply_ticket`)."""
from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

from ..core.errors import LthError, short_reason
from .manifest import RECORD, verify

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def push(folder: str | Path, repo: str, private: bool = False, token: str | None = None,
         message: str | None = None) -> str:
    """Upload the export in `folder` to the model repository `repo` (created if missing); returns the commit's URL."""
    folder = Path(folder).expanduser()
    if not (folder / RECORD).is_file():
        raise LthError(f"{folder} is no complete export (no {RECORD}); push a folder that lth export wrote and lth "
                       "inspect accepts")
    if not REPO_ID.fullmatch(repo):
        raise LthError(f"--repo {repo!r}: give a Hub repository id, owner/name (e.g. me/minilm-mrpc-ticket-66)")
    info = verify(folder)  # a damaged or swapped file is refused here, before anything is sent
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
                  for name in [*info["files"]["sha256"], RECORD]]
    if (folder / "model" / "README.md").is_file():  # the Hub shows the card at the root
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(folder / "model" / "README.md")))
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.create_commit(repo, operations, commit_message=message or
                                   f"lth ticket: level {info['level']} of {info['run']}")
    except Exception as exc:  # huggingface_hub and its HTTP client raise many types
        raise LthError(f"could not push to {repo} ({short_reason(exc)}); {_advice(exc)}") from None
    return getattr(commit, "commit_url", str(commit))


def _advice(exc: Exception) -> str:
    text = str(exc).lower()
    if "401" in text or "token" in text or "unauthorized" in text or "403" in text:
        return "log in with `hf auth login` (or pass --token) with a token that may write to that repository"
    return "check the network (the Hub needs one) and try again: nothing was changed on the Hub"


def hub_file(repo: str, name: str) -> Path:
    """A file of a Hub repository, downloaded (or from the cache), refused with one line when it cannot be."""
    try:
        return Path(hf_hub_download(repo, name))
    except Exception as exc:  # offline, no such repository or file, no access
        raise LthError(f"could not read {name} from the Hub repository {repo} ({short_reason(exc)}); check the id "
                       "and the network, or give a local path") from None
