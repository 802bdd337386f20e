"""Streams, in the order of the flow: the event contract (contract/), the Kafka adapters (kafka/), the join
(join/), the Faust worker around it (worker/), and the cascade simulator (simulator/); metrics.py holds the
worker's Prometheus metrics, shared by the join and the runtime."""
