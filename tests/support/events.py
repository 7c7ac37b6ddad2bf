"""Events for the step-wise path: a batch frame's rows as :class:`ClickEvent` objects."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from features.events import ClickEvent


def events_from_frame(df: pd.DataFrame) -> Iterator[ClickEvent]:
    def opt(v: object) -> str | None:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)

    for row in df.itertuples(index=False):
        price = None if pd.isna(row.price) else float(row.price)
        yield ClickEvent(
            event_time_ms=int(row.event_time_ms),
            event_type=str(row.event_type),
            user_id=str(row.user_id),
            product_id=opt(row.product_id),
            category=opt(row.category),
            brand=None,
            price=price,
            quantity=int(row.quantity),
            session_id=opt(row.session_id),
            order_id=opt(row.order_id),
        )
