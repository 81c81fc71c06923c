"""Ray bootstrap: join the cluster named by RAY_ADDRESS (as under ``ray job submit``), else start a local one.

A local instance's workers inherit this process's environment, so S3 settings need no forwarding (and
credentials never pass through a runtime_env, where Ray could log them).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Connect once. ``address`` beats RAY_ADDRESS; with neither, start a local instance sized to the machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs.setdefault("log_to_driver", True)
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
        return
    log.info("no RAY_ADDRESS: starting a local Ray instance on %d CPUs", os.cpu_count() or 1)
    kwargs.setdefault("include_dashboard", False)
    ray.init(**kwargs)
