"""User objects (`ketch.api`) -> the shared mesh model (`ketch.mesh`), as istiod derives
ztunnel's resources. Pure functions; the control plane's push and the standalone file mode
both call them, so translation happens in one place."""
