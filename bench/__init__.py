"""Benchmarks of gr-s2s-consumer against baselines measured in the same run.

`python -m bench` (or `make bench`) runs every scenario against a local Kafka
broker and the S2S API simulator, each baseline on the same topic as the
worker it is compared with, and writes `bench/results/latest.json` and
`bench/results/latest.md`. Every process that is measured (the worker, each
baseline, the simulator) runs in its own process, so its CPU time and memory
are its own.

Modules: one per scenario (`throughput`, `rate_limited`, `latency`,
`memory`); `runners` holds the measured processes' entry points; `harness`
the plumbing (broker, simulator process, producers, /proc sampling);
`report` the JSON and Markdown output; `profile` an optional py-spy run.
"""
