"""Metrics and reports: dataset summaries now; fidelity, value quality and policy evaluation in later work."""
