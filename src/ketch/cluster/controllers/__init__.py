"""The local cluster's controllers: Kubernetes' kube-scheduler and kube-controller-manager
roles for the kinds Ketch runs (docs/controllers.md).

- `scheduler`: Pod -> node (spread over Ready nodes, `nodeSelector`, `nodeName`).
- `deployment`: Deployment -> ReplicaSets (rolling update, Recreate, history).
- `replicaset`: ReplicaSet -> Pods.
- `endpoints`: Service + Pods -> EndpointSlices.
- `gc`: objects whose owner is gone are deleted.

Those are pure decisions with table tests; `sync` is the store I/O around them and `run` the
watch-driven loop. `run_controllers(store, stop)` is what the `cluster controllers` process runs.
"""

from ketch.cluster.controllers.run import ControllerManager, run_controllers

__all__ = ["ControllerManager", "run_controllers"]
