"""Ray runs only where nothing but loopback can be reached: a loopback-only network namespace.

Ray listens on every interface when it finds a routable address, even when told 127.0.0.1. So the demo and the
tests start Ray only when this process sees no network interface but loopback (``unshare --net`` gives such a
namespace), and the demo re-executes itself inside one when it can (as root, with ``unshare`` and ``ip``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

import psutil

from vramgate.errors import SystemFault

#: Set in the environment of a process re-executed inside a new network namespace (so it never loops).
REEXEC_FLAG = "VRAMGATE_NETNS"
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


class NotIsolated(SystemFault):
    """This process can reach a network other than loopback, so Ray must not start here."""

    def __init__(self, interfaces: Sequence[str]) -> None:
        self.interfaces = tuple(interfaces)
        super().__init__(
            f"Ray starts only in a loopback-only network namespace; this one has {', '.join(interfaces)}. "
            f"Run it inside one: {unshare_prefix()} <command>"
        )


def unshare_prefix() -> str:
    """The shell prefix that runs a command in a new loopback-only network namespace."""
    return "unshare --net sh -c 'ip link set lo up && exec \"$@\"' --"


def other_interfaces() -> list[str]:
    """The network interfaces other than loopback this process sees (empty inside ``unshare --net``)."""
    stats = psutil.net_if_stats()
    names = set(psutil.net_if_addrs()) | set(stats)
    return sorted(name for name in names if name != "lo")


def is_loopback(address: str) -> bool:
    """Whether a listening address is loopback only (127.0.0.0/8, ``::1``, or IPv4-mapped 127.x)."""
    return address == "::1" or address.startswith(("127.", "::ffff:127."))


def can_reexec() -> bool:
    """Whether this process may enter a new network namespace (root, ``unshare`` and ``ip`` present)."""
    geteuid = getattr(os, "geteuid", None)
    return (
        geteuid is not None
        and geteuid() == 0
        and shutil.which("unshare") is not None
        and shutil.which("ip") is not None
        and not os.environ.get(REEXEC_FLAG)
    )


def require_loopback_only() -> None:
    """Raise :class:`NotIsolated` unless every interface but loopback is absent."""
    others = other_interfaces()
    if others:
        raise NotIsolated(others)


def reexec_isolated(argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` run inside a new loopback-only network namespace (never returns)."""
    env = dict(os.environ, **{REEXEC_FLAG: "1"})
    unshare = shutil.which("unshare")
    assert unshare is not None
    script = 'ip link set lo up && exec "$@"'
    os.execve(unshare, [unshare, "--net", "sh", "-c", script, "--", *argv], env)


def ensure_isolated(argv: Sequence[str] | None = None) -> None:
    """Return when this process is loopback-only; else re-execute ``argv`` (default: this command) in a new
    namespace when allowed, or raise :class:`NotIsolated`."""
    others = other_interfaces()
    if not others:
        return
    if can_reexec():
        reexec_isolated(list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]])
    raise NotIsolated(others)
