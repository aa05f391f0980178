"""Moved in catdiff 0.2: CATDM's sampler is `catdiff.methods.catdm.sampler` (the shared sampling helpers,
e.g. `guided_log_probs`, are in `catdiff.methods.shared`); see CHANGELOG.md."""
raise ImportError("catdiff.sampler moved to catdiff.methods.catdm.sampler (shared helpers such as guided_log_probs: "
                  "catdiff.methods.shared); see catdiff's CHANGELOG.md")
