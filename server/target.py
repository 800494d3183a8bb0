"""What a request asks for besides its tensors: which model and version, its timeout, its id.

Every front end builds a :class:`Target` from its own wire fields; the data plane
resolves it (:meth:`server.dataplane.DataPlane.resolve`) and enforces the timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import VersionNotFound
from server.repository import parse_version_number
from server.tensor import shown


@dataclass(frozen=True, slots=True)
class Target:
    """A request's model, version or label, Triton-style timeout, and its own id.

    ``version`` is the text the client sent ("" = the model's default version),
    parsed by :func:`version_number` once the model is known to exist, so an
    unknown model is reported as such whatever version it names. ``label`` (our
    Predict API only, like TF Serving's ``version_label``) names a version instead.
    ``request_id``: the Open Inference Protocol's ``id`` ("" = none; checked by the codec,
    :func:`server.request_context.check_request_id`).
    """

    model: str
    version: str = ""
    timeout_us: int | None = None  # Triton's "timeout" parameter, as sent
    label: str = ""
    request_id: str = ""

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout_us is None else self.timeout_us / 1e6


def version_number(model: str, text: str) -> int:
    """An Open Inference Protocol version string -> its number (0 for "": the default one).

    Versions follow the repository's rule (:func:`server.repository.parse_version_number`):
    ASCII ``[1-9][0-9]*`` within int64, so ``01``, ``²`` or full-width digits are not
    quietly read as another number.
    """
    if not text:
        return 0
    number = parse_version_number(text)
    if number is None:
        raise VersionNotFound(
            f"unknown version {shown(text)} of model {shown(model)}; versions are "
            "positive integers in ASCII digits without leading zeros"
        )
    return number
