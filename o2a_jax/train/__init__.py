"""Training: flow-matching loss, trainable sets, optimizers, initialisation and the train step.

The loop (`trainer.py`) drives `step.make_train_step`; see `step.py` for the functional API.
"""
