"""Watching the inspection line: the prediction log (:mod:`~bridgenet.monitor.log`) that
``bridgenet predict`` and the served model append to, what its records are made of
(:mod:`~bridgenet.monitor.records`), and the drift monitor over it (:mod:`~bridgenet.monitor.watch`)."""
