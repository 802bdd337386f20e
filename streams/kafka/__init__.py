"""Kafka adapters: topics, client security, the producer SDK, the worker's batch producer, the decode guard."""
