"""Quaero runs jobs itself: definitions from TOML files, steps as subprocesses or greenlets.

- ``definitions.py``: the definition files of the jobs folder (parse, validate, list).
- ``leases.py``: which runner runs which job, heartbeats, the jobs of runners that are gone.
- ``context.py``: a running job's state and the small context its steps get.
- ``command_step.py``: a shell command in its own process group, its output as lines.
- ``python_step.py``: ``module:function`` in a greenlet, its logging routed to its step.
- ``scheduler.py``: :class:`Runner`, one per process: claims, runs, cancels, recovers.

``create_app`` builds the runner; the app's ``start()`` starts its loop in each process.
"""
from .command_step import line_level
from .definitions import Definition, DefinitionError, parse_definition
from .scheduler import Runner

__all__ = ["Definition", "DefinitionError", "Runner", "line_level", "parse_definition"]
