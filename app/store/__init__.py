"""SQL lives here: functions that take a connection, run statements and never commit.

The caller (a request handler, a task, a command) owns the transaction.
"""
