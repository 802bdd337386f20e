"""The join, free of any broker: joiner, sample assembler, candidate pool, item catalogue, stream features."""
