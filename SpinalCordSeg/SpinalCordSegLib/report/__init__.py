"""Pictures for people: the overlay PNG of a prediction (``overlay``).

May import: ``measures`` and everything below it.
"""
