"""Mesh identity: SPIFFE IDs, the certificate authority, node authorization, cert manager."""
