"""Invoices: numbering, states, lines and documents.

Importing this package imports :mod:`billfold.invoices.service`, which registers its reaction to
paid orders (``billfold.orders.events.on_paid``): every process that imports ``billfold.invoices``
(the API through ``billfold.api`` → ``billfold.invoices.api``; a worker through the package)
issues each paid order's invoice in the transaction that marks it paid, and a credit note for each
refund in the transaction that records it (:mod:`billfold.invoices.credit_notes`, ``on_refund``).
"""

from billfold.invoices import credit_notes as credit_notes  # noqa: F401  (registers the on_refund reaction)
from billfold.invoices import service as service  # noqa: F401  (registers the on_paid reaction)
from billfold.invoices import receipts as receipts  # noqa: F401  (registers the receipt, after the invoice)
