"""The real broker and Redis of the stream integration tests, for the stream unit tests that need them."""

from tests.integration.conftest import broker, redis_server

__all__ = ["broker", "redis_server"]
