"""ZDS, the node agent -> node proxy wire contract (Istio's `istio.workload.zds`).

A sans-IO codec (messages <-> bytes, one per SEQPACKET datagram, the netns fd in
SCM_RIGHTS) and a thin unix-socket layer used by both roles. See ../shared/design/ZDS.md.
"""
