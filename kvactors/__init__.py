"""kvactors: a Dynamo-style distributed key-value store built from supervised Pykka actors.

The public API is what `__all__` lists; every other module is an implementation detail
unless its own docs say otherwise.
"""

from __future__ import annotations

from kvactors.client.client import Client
from kvactors.client.local_client import LocalClient
from kvactors.config import NodeConfig
from kvactors.errors import (
    ActorCrashedError,
    BadRequestError,
    ChildStartError,
    ConfigError,
    DuplicateChildError,
    ForbiddenError,
    InternalError,
    KVActorsError,
    OverloadedError,
    RequestTimeoutError,
    RestartIntensityError,
    TooLargeError,
    UnavailableError,
)
from kvactors.runtime.supervision import (
    ChildExited,
    ChildInfo,
    ChildSpec,
    ExitReason,
    Restart,
    Strategy,
    SupervisedActor,
    Supervisor,
    start_supervised,
)
from kvactors.system import ActorSystem

__version__ = "0.1.0.dev0"

__all__ = [
    "ActorCrashedError",
    "ActorSystem",
    "BadRequestError",
    "ChildExited",
    "ChildInfo",
    "ChildSpec",
    "ChildStartError",
    "Client",
    "ConfigError",
    "DuplicateChildError",
    "ExitReason",
    "ForbiddenError",
    "InternalError",
    "KVActorsError",
    "LocalClient",
    "NodeConfig",
    "OverloadedError",
    "RequestTimeoutError",
    "Restart",
    "RestartIntensityError",
    "Strategy",
    "SupervisedActor",
    "Supervisor",
    "TooLargeError",
    "UnavailableError",
    "__version__",
    "start_supervised",
]
