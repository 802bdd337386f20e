"""Redis feature store: item/user features, shared featurization and versioned model weights."""
