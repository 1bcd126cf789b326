"""Local stand-ins for production parts: a Kafka broker, the S2S API simulator, the demo.

Shipped in the package so `gr-consumer demo` and `simulate-api` work from an install.
"""
