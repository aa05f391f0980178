"""catdiff-vision: image tasks for catdiff.

Provides (through the ``catdiff`` entry point ``vision`` -> :mod:`catdiff_vision.plugin`):

- tasks ``digits`` / ``digits-cond`` (:mod:`.digits`, data and split in :mod:`.data`)
- tokenizer ``grey-levels`` (:mod:`.grey_levels`)
- metric ``digits-fid`` (:mod:`.fidelity`), an FID in the feature space of a small digit
  classifier (:mod:`.classifier`) plugged into torch-fidelity as the feature extractor
  ``"digits-classifier"`` (:mod:`.feature_extractor`)
- sample grids and collapse plots (:mod:`.render`)
"""
__version__ = "0.1.0"
