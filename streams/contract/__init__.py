"""The event contract: the fields of every topic, the typed records, their strict validation and decoding."""
