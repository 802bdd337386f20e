"""Online learner: two tiers trained incrementally with GHCL."""
