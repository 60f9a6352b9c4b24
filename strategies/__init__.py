"""The strategy registry.

Every module in this package is imported, so a new strategy is one file with a @register'ed class
and nothing else to edit; modules named in $FFNBENCH_STRATEGIES (comma-separated, importable) are
imported too, for strategies kept outside this package. Names, display order and colours of
strategies everywhere (report, plots, simulator) come from here.
"""
import importlib
import os
import pkgutil

from ffnbench.strategies.base import REGISTRY, Layout, LayoutError, Strategy  # noqa: F401

PLUGINS_ENV = "FFNBENCH_STRATEGIES"
# Colours for strategies that do not pick one (tab10's, skipping those the built-ins use).
_SPARE_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")


def _import_all():
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise LayoutError(f"${PLUGINS_ENV}: cannot import strategy module {module} ({e})")


_import_all()


def get(name):
    """The strategy class called `name`; LayoutError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise LayoutError(f"unknown strategy {name!r}; known: {', '.join(names())}")
    return REGISTRY[name]


def names():
    """Strategy names in display order (simplest first)."""
    return sorted(REGISTRY, key=lambda n: (REGISTRY[n].order, n))


def reference():
    """The simplest strategy (first in display order): the default, and the one the others must reproduce."""
    return names()[0]


def layout(name, ranks, options):
    """The Layout of strategy `name` on `ranks` ranks; LayoutError when impossible."""
    return get(name).layout(ranks, options)


def order_key(name):
    """Sort key: registered strategies in display order, then unknown names alphabetically."""
    known = names()
    return (known.index(name), "") if name in known else (len(known), name)


def color(name):
    """A strategy's colour in every figure: its own, else a spare one picked from its name."""
    cls = REGISTRY.get(name)
    if cls is not None and cls.color:
        return cls.color
    return _SPARE_COLORS[sum(map(ord, name)) % len(_SPARE_COLORS)]
