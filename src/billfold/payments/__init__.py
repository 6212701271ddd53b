"""Payments: providers as configured rows, provider customers, saved payment methods (and later
payments, refunds and routing). See docs/payments.md."""
