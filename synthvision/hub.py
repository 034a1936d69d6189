"""Hugging Face hub helpers: loading bars, and failing fast when the hub cannot be reached.

Loading bars: one switch for the hub, diffusers and transformers.

The CLI hides them where nobody reads them (`--no-progress`, every rank but the main one of a
launch: 8 ranks would each draw "Loading pipeline components"). huggingface_hub has the switch
(also `HF_HUB_DISABLE_PROGRESS_BARS=1`); diffusers and transformers keep flags of their own, so
the loaders call `follow_hub_progress_setting()` after importing them.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from synthvision.errors import SpecError

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hide_loading_bars() -> None:
    """Hide Hugging Face download and loading progress bars in this process."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def follow_hub_progress_setting() -> None:
    """Turn the diffusers and transformers bars off when the hub's are off (no-op otherwise)."""
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled

    if not are_progress_bars_disabled():
        return
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None:
            module.disable_progress_bar()


def local_files_only_for(
    model: str, *, filename: str, revision: str | None, asked: bool, where: str
) -> bool:
    """The `local_files_only` to load `model` with, checked before any download is tried.

    Without network, huggingface_hub retries for about a minute before diffusers reports that
    the repository "does not appear to have a file named model_index.json", which hides the
    cause (offline mode gives the same words at once). So for a hub id: when the hub cannot or
    may not be reached (`asked`, HF_HUB_OFFLINE), a model in the local cache loads from it
    (`True`), and one that is not is a SpecError at once that says why. `filename` is a file
    every snapshot of the model has (`model_index.json`, `config.json`).
    """
    if Path(model).expanduser().is_dir():
        return asked
    from huggingface_hub import constants, try_to_load_from_cache

    offline = asked or constants.HF_HUB_OFFLINE
    if not offline and _hub_reachable(constants.ENDPOINT):
        return False  # online: loads (and downloads) as usual
    try:
        cached = try_to_load_from_cache(model, filename, revision=revision)
    except ValueError:  # not a valid repo id: from_pretrained words that error
        return asked
    if isinstance(cached, str):
        return True
    why = (
        "local_files_only is set"
        if asked
        else "HF_HUB_OFFLINE=1 is set"
        if constants.HF_HUB_OFFLINE
        else f"{urlparse(constants.ENDPOINT).hostname} cannot be reached"
    )
    raise SpecError(
        f"{where}: {model!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and {why}, so it cannot be downloaded; download it where there is network "
        f"(hf download {model}) and copy the cache here, or give a local directory saved with "
        "save_pretrained"
    )


def cached_commit(model: str, *, filename: str, revision: str | None) -> str | None:
    """The commit of the hub snapshot `model` loads from (the cache's `snapshots/<commit>/`), or
    None for a local directory or a model not in the cache. Recorded with every sample, since a
    hub id alone (or `main`) names different weights over time."""
    if Path(model).expanduser().is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, filename, revision=revision)
    except ValueError:
        return None
    if not isinstance(cached, str):
        return None
    commit = Path(cached).parent.name
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


@functools.lru_cache(maxsize=4)
def _hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    """One TCP connection to the hub's host (once per process). Behind a proxy the host may be
    unreachable directly while downloads work, so a configured proxy counts as reachable."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    url = urlparse(endpoint)
    if not url.hostname:
        return True
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
