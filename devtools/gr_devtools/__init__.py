"""Local stand-ins for production parts: a Kafka broker, the S2S API simulator, the demo.

A distribution of its own (gr-s2s-consumer-dev), never in the production wheel or
image; it adds `gr-consumer demo` and `simulate-api` (see commands.py).
"""
