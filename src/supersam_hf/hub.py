"""Upload a folder this tool wrote (an export, a trained supernet) to the Hugging Face Hub, as transformers'
`push_to_hub` does: `create_repo(exist_ok=True)` + `upload_folder`, the token from the argument, `HF_TOKEN` or the
stored login. Failures are one line that says where the local files are."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .errors import SupersamError
from .outputs import MANIFEST_NAME

logger = logging.getLogger(__name__)


def resolve_token(token: str | None, folder: Path, repo_id: str | None) -> str:
    """The token to push with (`token`, else `HF_TOKEN` / the stored login); a clear error without one."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise SupersamError(
            f"Cannot push to the Hub: no Hugging Face token. Set the HF_TOKEN environment variable, run "
            f"`hf auth login`, or pass --token (token=...). The files are kept in {folder}; upload them later with "
            f"`hf upload {repo_id or folder.name} {folder}`."
        )
    return token


def push_folder(folder: Path, repo_id: str, *, private: bool | None, token: str | None, commit_message: str,
                ignore_patterns: list[str] | None = None,
                on_repo: Callable[[str], None] | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` (its manifest and `ignore_patterns` left out). `on_repo` is
    called with the resolved repo id before the upload (a name without namespace resolves to the user's), e.g. to
    rewrite a card that names it. Returns the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    token = resolve_token(token, folder, repo_id)
    try:
        repo_url = create_repo(repo_id, private=private, exist_ok=True, token=token)
        if on_repo is not None:
            on_repo(repo_url.repo_id)
        commit = upload_folder(folder_path=str(folder), repo_id=repo_url.repo_id, token=token,
                               commit_message=commit_message, ignore_patterns=[MANIFEST_NAME, *(ignore_patterns or [])])
    except Exception as error:  # HTTP errors (401, 403, ...) and connection failures: say so without a traceback
        reason = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())  # Hub errors span lines
        raise SupersamError(
            f"Pushing {folder} to the Hub repo {repo_id} failed ({type(error).__name__}: {reason}). The files are "
            f"kept in {folder}."
        ) from error
    logger.info("Pushed %s to %s: %s", folder, repo_url, commit.commit_url)
    return commit.commit_url


__all__ = ["push_folder", "resolve_token"]
