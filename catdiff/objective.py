"""Moved in catdiff 0.2: CATDM's objective is `catdiff.methods.catdm.objective` (the shared sampling helpers,
e.g. `guided_log_probs`, are in `catdiff.methods.shared`); see CHANGELOG.md."""
raise ImportError("catdiff.objective moved to catdiff.methods.catdm.objective (shared helpers such as guided_log_probs: "
                  "catdiff.methods.shared); see catdiff's CHANGELOG.md")
