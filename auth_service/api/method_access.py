"""Who may call each gRPC method the server exposes, whatever its kind (unary or streaming).

Deny by default: a method in none of these tables is refused for everyone, so a new RPC (or
a service registered by mistake) is unreachable until someone decides who may call it.

- our service: the roles of auth_service.api.callers.RPC_ROLES;
- grpc.health.v1.Health: anyone, without credentials (probes carry none);
- server reflection: any authenticated caller, whatever its role; anyone when
  GARMIN_AUTH_REFLECTION=open (when it is off, the service is not even registered).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from auth_service.api.callers import RPC_ROLES

SERVICE_NAME = "garmin_auth.v1.GarminAuthService"
HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_METHODS = frozenset({f"/{HEALTH_SERVICE}/Check", f"/{HEALTH_SERVICE}/Watch"})
REFLECTION_METHODS = frozenset(
    {
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


class Kind(Enum):
    """What a method needs of its caller."""

    # No credentials at all (health).
    PUBLIC = "public"
    # Any caller of the callers file, whatever its roles (authenticated reflection).
    ANY_CALLER = "any caller"
    # A caller holding one of `roles` (our RPCs).
    ROLES = "roles"
    # Nobody: the method is in no table.
    DENIED = "denied"


@dataclass(frozen=True)
class Access:
    kind: Kind
    service: str
    method: str
    roles: frozenset[str] = frozenset()


def split_method(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def access_for(method: str, *, open_reflection: bool) -> Access:
    service, name = split_method(method)
    if method in HEALTH_METHODS:
        return Access(Kind.PUBLIC, service, name)
    if method in REFLECTION_METHODS:
        return Access(Kind.PUBLIC if open_reflection else Kind.ANY_CALLER, service, name)
    if service == SERVICE_NAME and name in RPC_ROLES:
        return Access(Kind.ROLES, service, name, RPC_ROLES[name])
    return Access(Kind.DENIED, service, name)
