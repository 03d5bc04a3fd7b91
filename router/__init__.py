"""edgeroute routing core: policy models, confidence scores, the pure decision function,
budgets and the wire schemas shared by the edge node and the cloud service.

Nothing in this package does I/O of its own: no network, disk, clock or randomness.
Callers pass those in (file *text*, the current time, the node's state).

The package itself imports nothing (importing `router.errors` or `router.edge_api`, as the
Python client does, loads no numpy); import names from their modules:
`router.decision.decide`, `router.outcome.after`, `router.policy.Policy`.
"""
