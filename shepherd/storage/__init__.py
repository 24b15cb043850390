"""Chat history: stored responses, conversations and their items, behind one interface.

`base.py` holds the records and the `HistoryStorage` protocol every backend implements (memory,
SQLite, PostgreSQL, Redis); the Responses and Conversations APIs see nothing else.
"""
