"""The embedded synthetic data set: procedural objects ray-cast to MVTec 3D-AD files.

:func:`bridgenet.data.synth.dataset.synthesize` renders it; nothing else in the
package depends on this sub-package. Its defect types and their families, which
evaluation reports per family, are in :mod:`bridgenet.data.families`.
"""
