"""Running many independent measurements side by side: one small executor interface with a
local default (worker processes on this machine, or none at all with one worker) and a Ray
backend for a cluster. Scoring by distortion (one masked run per component), sensitivity
(one per group and ratio) and sweeps (one prune per ratio) hand their work to it.

A job is ``map(payload, work, items)``: ``payload`` (the model and what every item reads)
reaches each worker once; ``work(state, item)`` runs there once per item, in chunks. An item
that raises is retried once, then comes back as :class:`Failed` with its error. Timing jobs
ask for the ``timing`` slot: one per node, so that two never time on one node at once.
``map_then`` adds timing that follows groups of a job's items (:class:`Then`: a sweep times
its copies a group at a time), after all of them or, with ``overlap``, each group as soon as
it is ready, in turn with the rest of the job.
"""

from .base import TIMING_RESOURCE, Executor, Failed, InProcess, Then
from .choose import EXECUTORS, make_executor

__all__ = ["EXECUTORS", "TIMING_RESOURCE", "Executor", "Failed", "InProcess", "Then",
           "make_executor"]
