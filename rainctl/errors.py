"""The root of rainctl's error tree."""

from __future__ import annotations


class RainctlError(Exception):
    """Every expected error of rainctl derives from it."""


class ConfigError(RainctlError):
    """A configuration or key file is unreadable or invalid.

    The message is one line that names the file and the key path in the file's own terms
    (`nodes[2].address: ...`), ready to be shown to an operator as is.
    """

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)


class OptionError(RainctlError):
    """A command-line option has a value that is not allowed, or conflicts with another.

    The message is one line naming the option, the value given and what is allowed.
    """


class MigrationError(RainctlError):
    """Another tool's configuration (keepalived.conf) cannot be read or converted, or a
    rainctl config cannot be expressed in the other tool's terms.

    The message is one line that starts with `FILE:LINE:` where the problem is in a file.
    """

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)


class KernelError(RainctlError):
    """A kernel operation (netlink, sysctl, raw socket) failed.

    The message is one line naming the operation, the object and the errno text.
    """

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)
