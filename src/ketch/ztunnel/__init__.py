"""The node L4 proxy ("ztunnel").

Pure core (no I/O): `state` (typed snapshot of workloads, services and policies), `rbac`
(L4 authorization), `route` (what to do with an outbound connection), `telemetry` (metric
labels and access-log records), `config` (standalone YAML config). The I/O layers (`hbone`,
listeners) decide with these functions and then act.
"""


class ZtunnelError(Exception):
    """Base of the node proxy's pure-core exceptions (invalid state, policy or config)."""
