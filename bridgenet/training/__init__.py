"""The trainer in parts: negatives, loss, the trainer's state and steps, and the finish step.

:mod:`bridgenet.train` runs the epochs, checkpoints and the summary with them.
"""
