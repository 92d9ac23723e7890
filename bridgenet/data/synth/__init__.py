"""The embedded synthetic data set: procedural objects ray-cast to MVTec 3D-AD files.

:func:`bridgenet.data.synth.dataset.synthesize` renders it; nothing else in the
package depends on this sub-package except the defect-family names that evaluation
reports per family (:data:`bridgenet.data.synth.dataset.DEFECT_FAMILIES`).
"""
