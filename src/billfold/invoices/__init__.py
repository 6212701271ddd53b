"""Invoices: states, lines, documents, credit notes and receipts.

Each paid order's invoice is issued in the transaction that marks it paid, and a credit note for
each refund in the transaction that records it: ``billfold.wiring.wire()`` attaches those
reactions (importing this package attaches nothing).
"""
