"""The audio-visual sync expert: an audio-window <-> mouth-crop embedding trained contrastively
(in-sync vs shifted pairs, as SyncNet / Wav2Lip's expert), the stand-in for SyncTalk's
Audio-Visual Encoder (SyncGaussian §3.2; pretrained on LRS2 there, weights we cannot fetch) and
the lip-sync discriminator FG-3DGS reuses. Stage ``sync_expert`` -> ``models/sync_expert/``.

- :mod:`talkgs.sync.model`: the networks (``talkgs``, ``wav2lip``), loading, the checkpoint format;
- :mod:`talkgs.sync.wav2lip`: Wav2Lip's expert and its input conventions (official weights);
- :mod:`talkgs.sync.data`: mouth crops, audio windows, pairs;
- :mod:`talkgs.sync.train`: params, training, the held-out sync accuracy, the stage.
"""
