"""The outbox relay: publishes due jobs to RabbitMQ and hands back jobs whose lease expired."""
