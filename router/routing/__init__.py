"""Routing: backends at run time, their circuit and limits, the model index, strategies,
discovery and health, and the dispatch of one request (choice and failover)."""
