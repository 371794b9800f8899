"""The data policy at run time: closed vocabularies of data classes and regions (the
guard on where remote deployments may point is `config.policy.check_upstream`).

Fail closed, everywhere a value restricts where data may go:

- a data class or region a request names that is not in the vocabulary is a 400 naming
  it (never "public", never "no region");
- a key's or team's stored `data_class` that the vocabulary no longer has (the config
  changed) refuses that key's requests with 403 until an admin fixes the metadata;
- an upstream URL is http(s) with a host and nothing else (no credentials, query or
  fragment); link-local and cloud metadata addresses are refused unless allowed, and
  with `upstream_hosts` set, so is every host no pattern matches.
"""

from __future__ import annotations

from inferplane.config.policy import PolicySettings, normalize
from inferplane.errors import InvalidRequest, PermissionDenied


class DataPolicy:
    def __init__(self, settings: PolicySettings):
        self.settings = settings
        self._rank = {name: i for i, name in enumerate(settings.data_classes)}
        self._needs = {k: frozenset(v) for k, v in settings.data_classes.items()}
        self._regions = frozenset(settings.regions) if settings.regions is not None else None

    @property
    def data_classes(self) -> list[str]:
        return list(self._rank)

    def data_class(self, value: str | None, *, param: str) -> str | None:
        """A data class a caller or admin names, normalized; 400 if unknown."""
        if value is None:
            return None
        name = normalize(value)
        if name not in self._rank:
            raise InvalidRequest(
                f"Unknown data class {value[:64]!r} in '{param}'; "
                f"choose one of: {', '.join(self._rank)}.",
                param=param,
                code="invalid_data_class",
            )
        return name

    def region(self, value: str | None, *, param: str) -> str | None:
        """A region a caller or deployment names, normalized; 400 if not allowed."""
        if value is None:
            return None
        name = normalize(value)
        valid = 0 < len(name) <= 64 and all(c.isalnum() or c in "._-" for c in name)
        if not valid or (self._regions is not None and name not in self._regions):
            known = f"; choose one of: {', '.join(sorted(self._regions))}" if self._regions else ""
            raise InvalidRequest(
                f"Unknown region {value[:64]!r} in '{param}'{known}.",
                param=param,
                code="invalid_region",
            )
        return name

    def strictest(self, *classes: str | None) -> str | None:
        """The most sensitive of the request's, its key's and its team's classes. A
        stored class the vocabulary no longer has refuses the request (403)."""
        known: list[str] = []
        for name in classes:
            if name is None:
                continue
            if name not in self._rank:
                raise PermissionDenied(
                    f"This key's or team's metadata names the data class {name[:64]!r}, "
                    "which the server's policy does not define; an admin must correct it.",
                    code="invalid_data_class",
                )
            known.append(name)
        return max(known, key=self._rank.__getitem__, default=None)

    def needs(self, data_class: str | None) -> frozenset[str]:
        """The deployment tags a request of this class may only go to."""
        return self._needs[data_class] if data_class is not None else frozenset()
