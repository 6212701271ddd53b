"""Subscriptions: lifecycle (service), charging (billing), proration, dunning, and the sweeps
the worker runs. Importing the package registers the sweeps (``billfold.kit.sweeps``)."""

from billfold.subscriptions import sweeps as sweeps  # noqa: F401  (registers the sweeps)
