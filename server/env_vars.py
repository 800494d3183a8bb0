"""Settings read from environment variables: what fashion-serve and fashion-train share.

Both commands take every flag as a ``FASHION_*`` variable too (server.config,
training.config). A pod's environment also carries variables that are not theirs: the
kubelet's service links, other commands' settings. So both read values the same way
(:func:`parse_value`), pass service links (:func:`is_service_link`) and refuse a name
that looks like a misspelt setting (:func:`closest_setting`) rather than ignore it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
# difflib ratio (of the names after the shared prefix) from which an unknown name is taken for
# a typo of a setting: MAX_BATCH/MAX_BATCH_SIZE 0.78, PROT/PORT 0.75, THREAD/THREADS 0.92;
# unrelated names stay below (TEAM/THREADS 0.55, VERSION/MODEL_VERSION 0.70).
TYPO_CUTOFF = 0.75
_SERVICE_LINK_NAME = re.compile(
    r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)"
)
_SERVICE_LINK_VALUE = re.compile(r"(tcp|udp|sctp)://[0-9A-Fa-f.:\[\]]+:[0-9]+")


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(raw)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "Path": Path,
    "bool": parse_bool,
}
# What a value of each type must be, as an error message says it.
_KINDS = {
    "int": "an integer",
    "float": "a number",
    "bool": f"one of {', '.join(TRUE_WORDS + FALSE_WORDS)}",
}


class BadValue(ValueError):
    """A variable's (or flag's) text is not a value of its setting's type."""

    def __init__(self, kind: str, raw: str) -> None:
        super().__init__(f"must be {kind}, got {raw!r}")


def parse_value(type_name: str, raw: str) -> Any:
    """``raw`` as a value of the setting's type (``int``, ``float``, ``str``, ``Path``,
    ``bool``); raises :class:`BadValue`, whose message completes "<flag/variable> ..."."""
    try:
        return _PARSERS[type_name](raw)
    except ValueError:
        raise BadValue(_KINDS.get(type_name, type_name), raw) from None


def closest_setting(name: str, known: Iterable[str], prefix: str) -> str | None:
    """The known variable that ``name`` looks like a misspelling of, if any.

    Compared without the shared ``prefix``, which would make every pair look alike.
    """
    suffixes = {variable[len(prefix) :]: variable for variable in known}
    close = difflib.get_close_matches(name[len(prefix) :], suffixes, 1, TYPO_CUTOFF)
    return suffixes[close[0]] if close else None


def is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` has the shape of a Kubernetes service-link variable.

    ``<SVC>_SERVICE_HOST``, ``<SVC>_SERVICE_PORT``, ``<SVC>_SERVICE_PORT_<NAME>``,
    ``<SVC>_PORT=proto://ip:port`` and ``<SVC>_PORT_<n>_<PROTO>`` (+ ``_PROTO``,
    ``_PORT``, ``_ADDR``). A bare ``*_PORT`` must also carry a link's value, so a
    misspelt port setting (``FASHION_METRIC_PORT=9091``) is still caught.
    """
    if _SERVICE_LINK_NAME.fullmatch(name):
        return True
    return name.endswith("_PORT") and is_link_value(value)


def is_link_value(value: str) -> bool:
    """Whether ``value`` is a service link's ``proto://ip:port`` (a ``<SVC>_PORT``'s value)."""
    return bool(_SERVICE_LINK_VALUE.fullmatch(value))
