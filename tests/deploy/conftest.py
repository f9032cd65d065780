"""The real broker, Redis and worker processes of the stream integration tests, for the image test."""

from tests.integration.conftest import broker, redis_server, stream_env, workers

__all__ = ["broker", "redis_server", "stream_env", "workers"]
