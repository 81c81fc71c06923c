"""Fault injectors that tests install into the product through its hooks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class CrashOnce:
    """A training ``epoch_end`` hook: the rank-0 worker hard-exits once, right after the checkpoint of
    ``after_epoch`` (1-based), if the file ``marker`` does not exist yet (it is created first).

    Ray pickles it by value into the workers (``register()`` below), so they need not import this module.
    """

    after_epoch: int
    marker: str

    def __call__(self, rank: int, epochs_done: int) -> None:
        import ray.train

        if rank != 0 or epochs_done != self.after_epoch or os.path.exists(self.marker):
            return
        open(self.marker, "w").close()
        # Wait until the controller has registered the checkpoint just reported: a worker killed before that
        # resumes from the checkpoint before it (the upload is done, the registration is not).
        ray.train.get_all_reported_checkpoints()
        log.warning("fault injection: worker exits after epoch %d", epochs_done)
        os._exit(1)


def register() -> None:
    """Let Ray pickle this module's injectors by value, so Ray workers can run them."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
