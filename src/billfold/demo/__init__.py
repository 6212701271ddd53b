"""The demo: a small realistic shop (shop) and months of its business lived through (history)."""
