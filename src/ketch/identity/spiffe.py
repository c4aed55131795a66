"""SPIFFE identities of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.

Istio compares principals without the "spiffe://" prefix ("cluster.local/ns/a/sa/b"), so
both spellings are produced here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


class InvalidSpiffeId(ValueError):
    pass


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain) or len(self.trust_domain) > 255:
            raise InvalidSpiffeId(f"invalid trust domain {self.trust_domain!r}")
        for what, value in (
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not _NAME.match(value) or len(value) > 253:
                raise InvalidSpiffeId(f"invalid {what} {value!r} in SPIFFE ID")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse 'spiffe://td/ns/N/sa/S' (the 'spiffe://' prefix may be omitted)."""
        rest = uri.removeprefix("spiffe://")
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise InvalidSpiffeId(
                f"{uri!r} is not a workload SPIFFE ID (expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>)"
            )
        return cls(parts[0], parts[2], parts[4])

    @property
    def uri(self) -> str:
        return f"spiffe://{self.principal}"

    @property
    def principal(self) -> str:
        """Istio's principal spelling: the URI without 'spiffe://'."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri
