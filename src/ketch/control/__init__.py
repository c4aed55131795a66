"""Control plane: admission of applied objects, and (later) xDS push and the CA service."""
