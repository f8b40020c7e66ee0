"""Host-side user errors share the device runtime's base class, so one CLI handler covers both."""

from firmware_sim.errors import UserError


class EdgeadError(UserError):
    """Bad input on the host: the message names the file or value and what is expected."""


__all__ = ["EdgeadError", "UserError"]
