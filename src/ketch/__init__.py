"""Ketch: a sidecar-less ("ambient") service mesh.

Packages:
  ketch.api       resource model (Kubernetes/Istio/Gateway API objects), YAML loading, validation
  ketch.store     config store (SQLite backend) with list/watch/resourceVersion semantics
  ketch.cli       the `ketch` command line
  ketch.identity  SPIFFE CA, certificate service, node authorization, certificate manager
  ketch.ztunnel   the node L4 proxy (HBONE, in-pod capture, L4 policy, telemetry)
  ketch.netns     network namespace and iptables helpers
"""

__version__ = "0.1.0"
