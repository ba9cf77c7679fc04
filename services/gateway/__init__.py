"""The gRPC gateway: validates requests, publishes task envelopes to Kafka, returns results."""
