"""Errors of the RTMP core.

As in h11: a `RemoteProtocolError` means the peer sent something we cannot
accept (close that connection, log the reason); `LocalProtocolError` means
our own code asked for something the protocol does not allow (a bug).
"""


class RTMPError(Exception):
    """Base class of every error the RTMP core raises."""


class RemoteProtocolError(RTMPError):
    """The peer broke the protocol or a configured limit."""


class LimitExceeded(RemoteProtocolError):
    """The peer exceeded a configured limit (message size, chunk size, ...)."""


class LocalProtocolError(RTMPError):
    """We were asked to do something out of protocol state."""
