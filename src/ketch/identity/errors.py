"""The identity package's exception family.

Every error carries the name of the gRPC status code the certificate service answers with
(`code`, e.g. "PERMISSION_DENIED": `grpc.StatusCode[code]`), so the service layer translates
errors in one place, and messages are written for the operator reading the control plane's
log or the node proxy's status output. Names, not `grpc.StatusCode` members, so that code
which only needs the errors (the node proxy with an in-process CA) does not load grpc.
"""

from __future__ import annotations


class IdentityError(Exception):
    """Base class of every error raised by ketch.identity."""

    code: str = "INTERNAL"


class CaConfigError(IdentityError):
    """The CA's own material (root, key, chain, state dir) is missing or inconsistent."""

    code = "FAILED_PRECONDITION"


class CsrRejected(IdentityError):
    """A certificate signing request failed validation (INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class MalformedCsr(CsrRejected):
    """Not a PEM-encoded PKCS#10 request, or not parseable."""


class CsrTooLarge(CsrRejected):
    """The CSR exceeds the size limit."""


class CsrBadSignature(CsrRejected):
    """The CSR's signature does not verify with its own public key."""


class WeakKey(CsrRejected):
    """Key type or size not allowed (only ECDSA P-256/P-384, RSA >= 2048)."""


class CsrSubjectNotEmpty(CsrRejected):
    """The CSR carries a subject (CN, O, ...); identities live only in the URI SAN."""


class CsrBadSan(CsrRejected):
    """The CSR's SANs are not exactly one URI SAN equal to the expected identity."""


class BadRequest(IdentityError):
    """The request around the CSR is invalid (metadata, identity syntax, ...)."""

    code = "INVALID_ARGUMENT"


class Unauthenticated(IdentityError):
    """The caller did not prove who it is (no/invalid node certificate, bad token)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(IdentityError):
    """The caller is known but may not have this identity."""

    code = "PERMISSION_DENIED"


class TokenError(Unauthenticated):
    """A bootstrap token is unknown, expired, already used or for another node."""


class CaUnavailable(IdentityError):
    """The certificate service could not be reached or failed (client side)."""

    code = "UNAVAILABLE"
