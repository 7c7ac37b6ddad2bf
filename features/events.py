"""The canonical click event: the one record every adapter produces and the worker consumes.

JSON on the wire, keyed by ``user_id``. Only ``event_time``, ``event_type`` and ``user_id``
are required. Validation of untrusted bytes lives in :mod:`features.validation`; this module
only owns the shape of a valid event and its event-type vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

VIEW: Final = "view"
CART: Final = "cart"
REMOVE_FROM_CART: Final = "remove_from_cart"
PURCHASE: Final = "purchase"
# Beyond the four asked for: ``return`` carries order-line cancellations (they must not count
# as demand, but a customer who returns goods is a churn signal); ``wishlist`` carries Taobao's
# ``fav``, an intent signal between a view and a cart.
RETURN: Final = "return"
WISHLIST: Final = "wishlist"

EVENT_TYPES: Final[tuple[str, ...]] = (VIEW, CART, REMOVE_FROM_CART, WISHLIST, PURCHASE, RETURN)
EVENT_TYPE_CODES: Final[dict[str, int]] = {name: i for i, name in enumerate(EVENT_TYPES)}


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """One valid event. ``event_time_ms`` is epoch milliseconds UTC."""

    event_time_ms: int
    event_type: str
    user_id: str
    product_id: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    quantity: int = 1
    session_id: str | None = None
    order_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent on the clickstream topic (``None`` fields omitted)."""
        out: dict[str, Any] = {
            "event_time": self.event_time_ms,
            "event_type": self.event_type,
            "user_id": self.user_id,
        }
        for name in ("product_id", "category", "brand", "price", "session_id", "order_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.quantity != 1:
            out["quantity"] = self.quantity
        return out
