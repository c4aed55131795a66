"""ZDS, the node agent -> node proxy wire contract (Istio's `istio.workload.zds`).

* `messages`  — typed messages <-> one datagram's bytes (1024-byte limit, fd rules).
* `session`   — both ends of one connection as sans-IO state machines
                (`AgentSession`, `ProxySession`).
* `transport` — the unix SOCK_SEQPACKET socket with SCM_RIGHTS (`ZdsSocket`), netns check.

Used by the node agent (`ketch.agent`, listens) and the node proxy
(`ketch.ztunnel.zds_client`, connects). See docs/node-agent.md and ../shared/design/ZDS.md.
"""
