"""The node L4 proxy ("ztunnel").

Pure core (no I/O): `state` (the snapshot of the shared model, `ketch.mesh`), `rbac` (L4
authorization), `route` (what to do with an outbound connection), `telemetry` (metric labels
and access-log records). The I/O layers (`hbone`, the listeners) decide with these functions
and then act. The node proxy never imports the user schema (`ketch.api`), the store or the
control plane: it consumes the mesh model (docs/architecture.md).
"""
