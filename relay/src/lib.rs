//! Publishes the transactional outbox to RabbitMQ. Work in progress.
