"""Which addresses the http executor may connect to, checked on the address each socket connects to.

A RelayJob's author chooses the URL, and the operator's pod can reach what its author cannot: cloud
metadata (credentials of the node), link-local services. Checking the URL's host before the request
would not do: a name can resolve to a forbidden address, or answer differently to a second lookup
(DNS rebinding). So the check sits in the socket factory aiohttp calls for every address it is about to
connect to, after resolution and after Happy Eyeballs chose the order: the address checked is the
address connected to. Behind an HTTP(S) proxy that address is the proxy's; the proxy then decides
where the request may go.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from aiohappyeyeballs import AddrInfoType

Network = IPv4Network | IPv6Network

# Link-local addresses (IPv4 and IPv6) and the cloud metadata services that live there (AWS, GCP,
# Azure at 169.254.169.254, AWS's IPv6 endpoint at fd00:ec2::254). Refused whatever the settings say.
ALWAYS_DENIED: tuple[Network, ...] = (
    ip_network("169.254.0.0/16"),
    ip_network("fe80::/10"),
    ip_network("fd00:ec2::254/128"),
)


@dataclass(frozen=True)
class EgressPolicy:
    """`deny` adds to ALWAYS_DENIED; a non-empty `allow` permits only its networks. Deny wins."""

    deny: tuple[Network, ...] = ()
    allow: tuple[Network, ...] = ()


def egress_refusal(address: str, policy: EgressPolicy) -> str | None:
    """Why connecting to `address` is refused, or None when it is permitted. Pure: no connection."""
    ip = ip_address(address)
    # An IPv4-mapped IPv6 address (::ffff:169.254.169.254) reaches the IPv4 host: judge both forms.
    forms: list[IPv4Address | IPv6Address] = [ip]
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        forms.append(ip.ipv4_mapped)
    for network in ALWAYS_DENIED:
        if any(form in network for form in forms):
            return f"{ip} is a link-local or cloud metadata address ({network}), never a target"
    for network in policy.deny:
        if any(form in network for form in forms):
            return f"{ip} is in RELAY_HTTP_DENY_CIDRS ({network})"
    if policy.allow and not any(form in network for network in policy.allow for form in forms):
        return f"{ip} is outside RELAY_HTTP_ALLOW_CIDRS"
    return None


class EgressForbidden(OSError):
    """Raised by the socket factory in place of a connection: aiohttp reports it as a connect error."""

    def __init__(self, refusal: str) -> None:
        super().__init__(errno.EACCES, refusal)


# The refusals met while one attempt connects. aiohttp (through aiohappyeyeballs) folds the errors
# of several addresses into one OSError whose type says nothing; this list keeps what was refused.
_refusals: ContextVar[list[str] | None] = ContextVar("egress_refusals", default=None)


class EgressGuard:
    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    def socket(self, addr_info: AddrInfoType) -> socket.socket:
        """aiohttp's `socket_factory`: a socket for an address the policy permits, else a refusal."""
        family, kind, proto, _, sockaddr = addr_info
        refusal = egress_refusal(str(sockaddr[0]), self.policy)
        if refusal is not None:
            refused = _refusals.get()
            if refused is not None:
                refused.append(refusal)
            raise EgressForbidden(refusal)
        return socket.socket(family=family, type=kind, proto=proto)

    @staticmethod
    @contextlib.contextmanager
    def watching() -> Iterator[list[str]]:
        """Collect the refusals of connections opened inside the block (tasks it starts included)."""
        refused: list[str] = []
        token = _refusals.set(refused)
        try:
            yield refused
        finally:
            _refusals.reset(token)
