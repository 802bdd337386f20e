"""Event contracts, producer SDK, cascade simulator and the Faust agents that assemble hybrid samples."""
