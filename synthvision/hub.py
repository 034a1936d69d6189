"""Hugging Face loading bars: one switch for the hub, diffusers and transformers.

The CLI hides them where nobody reads them (`--no-progress`, every rank but the main one of a
launch: 8 ranks would each draw "Loading pipeline components"). huggingface_hub has the switch
(also `HF_HUB_DISABLE_PROGRESS_BARS=1`); diffusers and transformers keep flags of their own, so
the loaders call `follow_hub_progress_setting()` after importing them.
"""

from __future__ import annotations


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
