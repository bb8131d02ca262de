"""``pollinator loadtest``: drive the whole stack against the simulator and check every change.

Modules: :mod:`.cli` (arguments, exit status), :mod:`.run` (the phases in order), one module
per phase — :mod:`.setup` (stack and instances), :mod:`.drive` (changes and drain),
:mod:`.capacity` (burst and ceiling), :mod:`.results` (results.json and the plot) — over a
shared :mod:`.context`; :mod:`.stack` (child processes and embedded services),
:mod:`.receiver` (the callback receiver, a separate process), :mod:`.ceiling` (the bare
aiohttp fetch loop, a separate process), :mod:`.monitor` (poll journal, receiver log and
psutil sampling while the run goes), :mod:`.analysis` (pure functions: percentiles,
change-log matching) and :mod:`.report` (table, JSON, PNG). Instances are created and the
simulator driven through :mod:`app.client`.
"""
