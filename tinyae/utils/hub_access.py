"""Hub access that fails fast and in one sentence when there is no network.

Without this, an unreachable Hub costs half a minute of retries and a screen of
warnings before the real message; with no DNS, only the local cache can answer.
"""

from __future__ import annotations

import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from tinyae.errors import ExportError, TeacherLoadError


def hub_unreachable() -> bool:
    """True when offline mode is on or the Hub's host does not resolve: then use the local cache only."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname or "", 443)
        return False
    except OSError:
        return True


@contextmanager
def quiet_hub() -> Iterator[None]:
    """Silence Hub retries and deprecation chatter that would bury the one sentence that matters."""
    from huggingface_hub.utils import logging as hub_logging

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub_logging.set_verbosity(level)


def not_on_hub_message(repo_id: str, what: str = "", subfolder: str | None = None, flag: str = "") -> str:
    """'Could not fetch REPO ...; download it with `hf download` and pass the folder' as one sentence."""
    where = repo_id + (f" (subfolder '{subfolder}')" if subfolder else "")
    pass_it = f"pass the folder with {flag} DIR" if flag else "pass DIR instead"
    if subfolder and flag:
        pass_it += f" {flag}.subfolder {subfolder}" if flag.startswith("--") else ""
    return (f"Could not fetch {what + ' ' if what else ''}'{where}' from the Hugging Face Hub (offline, unreachable, "
            f"gated or no such repo): download it where the Hub is reachable (`hf download {repo_id} --local-dir DIR`) "
            f"and {pass_it}.")


def no_config_message(folder: str | Path) -> str:
    """Why a local folder is not a VAE, and the flag that fixes the usual case: a pipeline folder, whose VAE is in
    its vae/ subfolder."""
    folder = Path(folder)
    inside = sorted(p.parent.name for p in folder.glob("*/config.json"))
    if "vae" in inside:
        hint = "it holds a pipeline's vae/config.json: pass --teacher.subfolder vae"
    elif inside:
        hint = f"pass the subfolder holding the VAE, e.g. --teacher.subfolder {inside[0]}"
    else:
        hint = "pass a folder saved with save_pretrained, or a pipeline folder with --teacher.subfolder vae"
    return f"'{folder}' is not a diffusers VAE folder (no config.json); {hint}."


def local_path_typo(text: str) -> str | None:
    """For `owner/name` where nothing exists but the folder `owner` does: that folder (a mistyped local path)."""
    path = Path(text)
    if path.exists() or not path.parent.is_dir() or str(path.parent) in ("", "."):
        return None
    return str(path.parent)


def looks_like_repo_id(text: str) -> bool:
    """owner/name, unless `owner` is a local folder (then it is a local path that does not exist)."""
    return (re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not text.startswith((".", "/"))
            and local_path_typo(text) is None)


def fetch_snapshot(repo_id: str, allow_patterns: list[str], what: str) -> Path:
    """The local folder of a Hub repo's files (from the cache when offline); one sentence if it cannot be had."""
    from huggingface_hub import snapshot_download

    try:
        with quiet_hub():
            return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=hub_unreachable()))
    except Exception:  # huggingface_hub raises many types for offline / unreachable / unknown
        raise ExportError(not_on_hub_message(repo_id, what)) from None


@contextmanager
def loading_vae(source: str, what: str, subfolder: str | None = None) -> Iterator[None]:
    """Loading a VAE with diffusers: whatever it and huggingface_hub raise (many types mean "not reachable")
    becomes one TeacherLoadError sentence that names the repo or folder; TeacherLoadErrors pass as they are."""
    try:
        with quiet_hub():
            yield
    except TeacherLoadError:
        raise
    except Exception as exc:
        if Path(source).exists():
            raise TeacherLoadError(f"Could not load {what} from '{source}': {exc}") from None
        raise TeacherLoadError(not_on_hub_message(source, what, subfolder, "--teacher")) from None
