"""Training: the one loop every variant runs (:func:`talkgs.train.loop.train`), its losses,
schedules, checkpoints and the data adapter over the preprocessing outputs."""
