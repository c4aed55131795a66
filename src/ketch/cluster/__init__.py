"""The local cluster runtime: Kubernetes' node-side roles on network namespaces of one machine.

`ketch up` builds a fabric of namespaces (an underlay, one per node, one per pod) and starts
the roles as processes: the control plane, controllers (scheduler, Deployments, endpoints)
and one node process per node (kubelet, service VIPs, cluster DNS). This package starts the
mesh roles (node agent, node proxy) as processes too; it never imports them.
`layout.py` is the one place that names things (namespaces, links, files, address ranges).
See docs/cluster.md.
"""
