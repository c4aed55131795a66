"""The `ketch` command line: kubectl-like verbs over the config store."""
