"""Edge gateway: the sites' only door. One gRPC stream per edge agent, bridged to Kafka."""
