"""sipedge: a SIP signalling edge proxy for Twilio Interconnect."""

from __future__ import annotations

from typing import NamedTuple

__version__ = "0.1.0"

#: Written beside the package by setup.py: "mypyc", or "python: <why not compiled>".
BUILD_NOTE = "core-build.txt"


class CoreBuild(NamedTuple):
    """How the sans-I/O core (sip, gateway, proxy, catalogue) was built.

    Attributes:
        kind: ``"mypyc"`` (compiled extension modules) or ``"python"``.
        reason: why the core is pure Python, when known ("" when compiled).
    """

    kind: str
    reason: str


def core_build() -> CoreBuild:
    """Whether ``sipedge.sip.message`` (and so the whole core) runs compiled.

    Returns:
        ``CoreBuild("mypyc", "")`` when the module was loaded from an extension module,
        else ``CoreBuild("python", reason)`` with the reason setup.py recorded.
    """
    from importlib import machinery, resources

    from sipedge.sip import message

    if (message.__file__ or "").endswith(tuple(machinery.EXTENSION_SUFFIXES)):
        return CoreBuild("mypyc", "")
    try:
        note = resources.files(__name__).joinpath(BUILD_NOTE).read_text("utf-8").strip()
    except OSError:
        note = ""
    if note.startswith("python: "):
        return CoreBuild("python", note.removeprefix("python: "))
    if note == "mypyc":  # built, but the compiled modules are not the ones imported
        return CoreBuild("python", "the compiled modules were not imported")
    return CoreBuild("python", "not built by setup.py (a source tree or an editable install)")
