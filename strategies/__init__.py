"""The strategy registry.

Every module in this package is imported, so a new strategy is one file with a @register'ed class
and nothing else to edit; modules named in $FFNBENCH_STRATEGIES (comma-separated, importable) are
imported too, for strategies kept outside this package. Tables and figures list strategies in the
order `names()` gives, derived from what each declares.
"""
import importlib
import os
import pkgutil

from ffnbench.strategies.base import REGISTRY
from ffnbench.strategies.declare import LayoutError

PLUGINS_ENV = "FFNBENCH_STRATEGIES"


def _import_all():
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise LayoutError(f"${PLUGINS_ENV}: cannot import strategy module {module} ({e})")


_import_all()

#: families in display order: ring all-reduces, synchronous servers, asynchronous servers, the rest
_FAMILIES = ("ring_allreduce", "sync_ps", "async_ps", None)


def get(name):
    """The strategy class called `name`; LayoutError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise LayoutError(f"unknown strategy {name!r}; known: {', '.join(names())}")
    return REGISTRY[name]


def _display_key(name):
    """The one-process reference first, then real multi-rank families, emulations last; then by name."""
    traits = REGISTRY[name].traits
    alone = not traits.emulated and _runs_alone(REGISTRY[name])
    return (not alone, traits.emulated, _FAMILIES.index(traits.simulator_model), name)


def _runs_alone(cls):
    """Whether the strategy runs on one rank only."""
    try:
        cls.resolve_layout(2, {})
    except LayoutError:
        return True
    return False


def names():
    """Strategy names in display order: the one-process reference first, then families, emulations last."""
    return sorted(REGISTRY, key=_display_key)


def reference():
    """The simplest strategy (first in display order): the default, and the one the others must reproduce."""
    return names()[0]


def layout(name, ranks, options):
    """The Layout of strategy `name` on `ranks` ranks; LayoutError when impossible."""
    return get(name).resolve_layout(ranks, options)


def order_key(name):
    """Sort key: registered strategies in display order, then unknown names alphabetically."""
    known = names()
    return (known.index(name), "") if name in known else (len(known), name)
