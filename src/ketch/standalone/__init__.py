"""Standalone mode, "the control plane in a file": `ketch ztunnel run --config FILE` reads
workloads, services and Istio policies from one YAML file (`config`), translates them with
the control plane's translation (`ketch.control.translate`) and runs a node proxy on them
(`run`). Composition only: the node proxy and the translation know nothing of this mode."""
