"""Small shared helpers (task spawning, logging setup)."""
