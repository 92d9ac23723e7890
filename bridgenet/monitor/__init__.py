"""Watching the inspection line: the prediction log (:mod:`~bridgenet.monitor.log`) that
``bridgenet predict`` and the served model append to, and what its records are made of
(:mod:`~bridgenet.monitor.records`)."""
