"""Analytics (issue 14): the merchant's view of the business, computed from the billing rows.

``metrics`` defines every number (revenue, MRR and its movements, subscriptions, churn, retention,
revenue recognition) with the rows behind it; ``events`` and ``cohorts`` keep ``analytics_events``
and ``user_cohorts``. Every definition is written in ``docs/analytics.md``.
"""
