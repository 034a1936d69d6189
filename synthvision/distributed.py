"""Process context of a build: single process by default.

The distributed implementation (accelerate) replaces `process_context`; this module is the only
place in the build path that may import accelerate.
"""

from __future__ import annotations

from synthvision.build import ProcessContext


def process_context() -> ProcessContext:
    return ProcessContext()
