"""k-fold cross-validation around the workflow: fold sheets in (`folds`), per-fold results out
(`combine`). Nothing in the workflow imports this package, so editing it reruns no rule."""
