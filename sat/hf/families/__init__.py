"""One module per translatable architecture; each registers a Family when imported."""
