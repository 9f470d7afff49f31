"""Models: per-Gaussian parameters, spatial encoders, condition tokens, deformers, the head model.

Components register themselves in :mod:`talkgs.models.registry` on import; variants name them
in ``params.yaml`` (:class:`talkgs.models.params.ModelParams`).
"""
