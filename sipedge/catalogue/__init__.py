"""Twilio Interconnect catalogue: edges, legacy ids, regions, gateway IPs, media range (dated).

Sans-I/O data: ``load()`` returns one cached, immutable ``Catalogue`` built from the shipped
``twilio.toml``. Config asks it to resolve edge names, build localized domains and refuse
public Twilio targets; the firewall and routing code ask it which addresses are Twilio's.
"""

from sipedge.catalogue.loader import (
    Catalogue,
    CatalogueError,
    Edge,
    EdgeMatch,
    HostClass,
    load,
    parse,
)

__all__ = ["Catalogue", "CatalogueError", "Edge", "EdgeMatch", "HostClass", "load", "parse"]
