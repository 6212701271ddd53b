"""Orders, their items and totals, checkout and refunds."""
