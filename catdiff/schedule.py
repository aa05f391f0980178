"""Moved in catdiff 0.2: CATDM's schedule is `catdiff.methods.catdm.schedule` (the shared sampling helpers,
e.g. `guided_log_probs`, are in `catdiff.methods.shared`); see CHANGELOG.md."""
raise ImportError("catdiff.schedule moved to catdiff.methods.catdm.schedule (shared helpers such as guided_log_probs: "
                  "catdiff.methods.shared); see catdiff's CHANGELOG.md")
