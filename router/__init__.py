"""edgeroute routing core: policy models, confidence scores, the pure decision function,
budgets and the wire schemas shared by the edge node and the cloud service.

Nothing in this package does I/O of its own: no network, disk, clock or randomness.
Callers pass those in (file *text*, the current time, the node's state).
"""

from router.decision import Decision, LocalResult, NodeState, decide
from router.errors import EdgerouteError
from router.outcome import after
from router.policy import Policy, TaskPolicy

__all__ = [
    "Decision",
    "EdgerouteError",
    "LocalResult",
    "NodeState",
    "Policy",
    "TaskPolicy",
    "after",
    "decide",
]
