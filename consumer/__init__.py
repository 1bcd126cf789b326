"""gr-s2s-consumer: Kafka game events to the GameRebellion S2S API, at least once."""

__version__ = "0.1.0"
