"""Models: the head contract, heads and their parts, losses -- every registered component.

Components register themselves in :mod:`talkgs.models.registry` when their module is imported;
the registry imports every module of this package (and of :mod:`talkgs.train`) on first lookup,
so a new component file is found without editing any list. Variants name components in
``params.yaml``; :mod:`talkgs.models.contract` says what a head, loss, sampler, post-render
module and callback provide.
"""
