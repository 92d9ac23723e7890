"""Serving a trained model: the MLflow pyfunc model (logged from code) and what describes it.

:mod:`bridgenet.serving.pyfunc_model` is the file MLflow runs to load and serve a
model, with its request validation; :mod:`bridgenet.serving.spec` gives its tensor
signature, an input example and the distributions it needs. Logging it to MLflow is
:func:`bridgenet.tracking.pyfunc.log_pyfunc_model`'s job.
"""
