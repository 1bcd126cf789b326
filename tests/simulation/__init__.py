"""A deterministic simulation of a worker: the real loop, ledger, batching, delivery, pacing and
DLQ logic, driven by a simulated consumer, API and DLQ producer on a virtual clock."""
