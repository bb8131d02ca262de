"""``pollinator loadtest``: drive the whole stack against the simulator and check every change.

Modules: :mod:`.cli` (arguments and the run's phases), :mod:`.stack` (child processes and
embedded services), :mod:`.receiver` (the callback receiver, a separate process),
:mod:`.ceiling` (the bare aiohttp fetch loop, a separate process), :mod:`.monitor` (poll
journal, receiver log and psutil sampling while the run goes), :mod:`.analysis` (pure
functions: percentiles, change-log matching) and :mod:`.report` (table, JSON, PNG).
"""
