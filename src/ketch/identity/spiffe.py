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


_NODE_PATH = "ketch/node"


@dataclass(frozen=True, order=True)
class NodeId:
    """A node proxy's own identity: spiffe://<trust-domain>/ketch/node/<node-name>.

    Deliberately not of the workload shape (`SpiffeId.parse` rejects it), so a node
    certificate can never be mistaken for a workload identity by a peer.
    """

    trust_domain: str
    node_name: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain) or len(self.trust_domain) > 255:
            raise InvalidSpiffeId(f"invalid trust domain {self.trust_domain!r}")
        if not _NAME.match(self.node_name) or len(self.node_name) > 253:
            raise InvalidSpiffeId(f"invalid node name {self.node_name!r} in node identity")

    @classmethod
    def parse(cls, uri: str) -> NodeId:
        """Parse 'spiffe://td/ketch/node/NAME' (the 'spiffe://' prefix is required)."""
        if not uri.startswith("spiffe://"):
            raise InvalidSpiffeId(f"{uri!r} is not a SPIFFE URI")
        parts = uri.removeprefix("spiffe://").split("/")
        if len(parts) != 4 or f"{parts[1]}/{parts[2]}" != _NODE_PATH:
            raise InvalidSpiffeId(
                f"{uri!r} is not a node identity (expected spiffe://<trust-domain>/ketch/node/<node>)"
            )
        return cls(parts[0], parts[3])

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/{_NODE_PATH}/{self.node_name}"

    def __str__(self) -> str:
        return self.uri
