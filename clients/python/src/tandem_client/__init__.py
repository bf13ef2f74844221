"""Python client of tandem's public gRPC API. See clients/python/README.md."""
from tandem_client.client import (
    DEFAULT_ADDRESS,
    Final,
    Generation,
    Health,
    ModelInfo,
    TandemClient,
    TandemError,
    Timings,
    WorkerStatus,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "Final",
    "Generation",
    "Health",
    "ModelInfo",
    "TandemClient",
    "TandemError",
    "Timings",
    "WorkerStatus",
]
