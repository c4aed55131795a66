"""HBONE: mTLS HTTP/2 CONNECT tunnels between node proxies (port 15008)."""
