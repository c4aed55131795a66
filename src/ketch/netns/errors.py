"""The `ketch.netns` exception family.

Every failure in this package is a `NetnsError`; messages say what failed, in which network
namespace, and the likely fix, because the reader is usually an operator looking at a pod
that lost its traffic.
"""

from __future__ import annotations


class NetnsError(Exception):
    """Base class for every error raised by `ketch.netns`."""


class NetnsNotFound(NetnsError):
    """The named network namespace (or the path/fd given for it) does not exist."""


class NetnsEnterError(NetnsError):
    """setns(2) into a network namespace failed (not root? not a netns fd?)."""


class CommandError(NetnsError):
    """A helper binary (ip, iptables-restore, ...) run inside a netns failed."""

    def __init__(self, message: str, *, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class IptablesError(CommandError):
    """Installing, inspecting or removing the in-pod redirection rules failed."""


class NoOriginalDestination(NetnsError):
    """The socket's connection was not redirected, so it has no SO_ORIGINAL_DST."""


class FabricError(NetnsError):
    """Building or tearing down the local node/pod fabric failed."""
