"""Training recipes: one ml_collections file per model, dataset and hardware."""
