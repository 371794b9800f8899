"""Prices per model, versioned: a change adds a version; usage rows point at theirs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from inferplane.store.database import connect, transaction
from inferplane.store.tables import prices

NonNegative = Annotated[float, Field(ge=0, le=1_000_000)]


class Price(BaseModel):
    """USD per million input and output tokens, plus a flat amount per request."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_per_million: NonNegative = 0.0
    output_per_million: NonNegative = 0.0
    per_request: NonNegative = 0.0


@dataclass(frozen=True, slots=True)
class PriceVersion:
    id: int
    model: str
    price: Price
    created_at: datetime

    def cost_nusd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Cost in nano-USD (USD per million tokens = nano-USD per thousandth of a token)."""
        p = self.price
        return round(
            prompt_tokens * p.input_per_million * 1000
            + completion_tokens * p.output_per_million * 1000
            + p.per_request * 1e9
        )

    def view(self) -> dict[str, Any]:
        return {
            "object": "price",
            "model": self.model,
            "version": self.id,
            **self.price.model_dump(),
            "created_at": int(self.created_at.timestamp()),
        }


class PriceBook:
    """The current price of each model, in memory; writes go to the store first."""

    def __init__(self, engine: sa.Engine):
        self._engine = engine
        self._current: dict[str, PriceVersion] = {}

    def load(self) -> None:
        latest = sa.select(sa.func.max(prices.c.id)).group_by(prices.c.model)
        with connect(self._engine) as conn:
            rows = conn.execute(sa.select(prices).where(prices.c.id.in_(latest))).all()
        self._current = {r.model: _version(r) for r in rows}

    def get(self, model: str) -> PriceVersion | None:
        return self._current.get(model)

    def set(self, model: str, price: Price) -> PriceVersion:
        current = self._current.get(model)
        if current is not None and current.price == price:
            return current
        with transaction(self._engine) as conn:
            row = conn.execute(
                prices.insert()
                .values(model=model, created_at=datetime.now(UTC), **price.model_dump())
                .returning(*prices.c)
            ).one()
        version = _version(row)
        self._current = {**self._current, model: version}
        return version

    def all(self) -> list[PriceVersion]:
        return sorted(self._current.values(), key=lambda v: v.model)


def _version(row: sa.Row[Any]) -> PriceVersion:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    price = Price(
        input_per_million=row.input_per_million,
        output_per_million=row.output_per_million,
        per_request=row.per_request,
    )
    return PriceVersion(row.id, row.model, price, created)
