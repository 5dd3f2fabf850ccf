"""Stage 2 of sact: few-shot episodes, the SA-CT model and its baselines, training and evaluation.

Everything here works on cached features read from a feature store; nothing imports the video
decoder or the backbone.
"""
