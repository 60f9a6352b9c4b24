"""Strategies by name. Adding one: a file with a @register'ed Strategy subclass, plus its import here."""
from strategies.base import REGISTRY, LayoutError, Strategy  # noqa: F401
from strategies import allreduce, emulated, mpi_allreduce, ps_async, ps_sync, single  # noqa: F401


def get(name):
    if name not in REGISTRY:
        raise LayoutError(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
